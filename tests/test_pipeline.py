"""The application layer built from a config, as a library user builds it; its bulk use cases run in this
process or on Ray through the same methods (the real photos are read where they are, never copied)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from id2_plugin.config import Config, load_config
from id2_plugin.errors import ConfigError
from id2_plugin.pipeline import IngestResult, Pipeline, RayExecutor, Upload


def test_from_config_adds_uploads_to_an_existing_store(photo_paths: list[Path], tmp_path: Path) -> None:
    """A store made earlier is opened without ``create_store`` and still takes new references."""
    config = tmp_path / "id2.yaml"
    config.write_text(
        "embedder:\n  input_size: 64\n  device: cpu\n  projection: none\n  allow_raw_latent: true\n"
        f"store:\n  path: {tmp_path / 'store'}\n"
    )
    cfg = load_config(config)
    with Pipeline.from_config(cfg, create_store=True) as pipeline:
        pipeline.add_files(photo_paths[:2])
    data = photo_paths[2].read_bytes()
    with Pipeline.from_config(cfg) as pipeline:
        res = pipeline.add_uploads([Upload(data, "ticket:1")])
        assert [rec.sha256 for _, rec in res.added] == [hashlib.sha256(data).hexdigest()]
        assert res.store_count == 3
        assert pipeline.identify(data).best.uri == "ticket:1"


def _config(tmp_path: Path, name: str) -> Config:
    """The raw TAEF2 latent at 64 px (fast on CPU) and a FAISS store of its own."""
    return load_config(
        None,
        {
            "embedder": {"input_size": 64, "device": "cpu", "projection": "none", "allow_raw_latent": True},
            "store": {"path": str(tmp_path / name)},
            "match": {"k": 2, "threshold": 0.9},
        },
    )


def _inputs(photo_paths: list[Path], tmp_path: Path) -> list[Path]:
    """Four real photos read in place, one of them given twice, a corrupt file and a missing one."""
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(photo_paths[11].read_bytes()[:300])
    return [*photo_paths[:4], photo_paths[0], corrupt, tmp_path / "missing.jpg"]


def _outcome(res: IngestResult) -> tuple[list[tuple[str, str]], list[str], list[str], int]:
    """What an ingestion did, independent of the order work finished in and of the wording of errors."""
    added = sorted((rec.sha256, rec.uri) for _, rec in res.added)
    return added, sorted(res.duplicates), sorted(name for name, _ in res.failures), res.store_count


def _add_twice(pipeline: Pipeline, files: list[Path], executor: RayExecutor | None) -> tuple[IngestResult, ...]:
    return pipeline.add_files(files, labels=("x",), executor=executor), pipeline.add_files(files, executor=executor)


def test_add_files_skips_duplicates_and_reports_unreadable_files(photo_paths: list[Path], tmp_path: Path) -> None:
    files = _inputs(photo_paths, tmp_path)
    with Pipeline.from_config(_config(tmp_path, "store"), create_store=True) as pipeline:
        first, again = (_outcome(r) for r in _add_twice(pipeline, files, None))
        shas = [hashlib.sha256(p.read_bytes()).hexdigest() for p in photo_paths[:4]]
        assert first == (
            sorted(zip(shas, (str(p.resolve()) for p in photo_paths[:4]))),
            [shas[0]],
            sorted(str(p) for p in files[-2:]),
            4,
        )
        assert again[0] == [] and again[1] == sorted([*shas, shas[0]]) and again[3] == 4
        report = pipeline.identify(photo_paths[2])
        assert report.best.uri == str(photo_paths[2].resolve()) and report.best.labels == ("x",)


def test_ray_execution_needs_a_pipeline_built_from_a_config(photo_paths: list[Path], tmp_path: Path) -> None:
    """Ray workers rebuild the components from the config: a pipeline assembled by hand cannot say how."""
    with Pipeline.from_config(_config(tmp_path, "store"), create_store=True) as built:
        by_hand = Pipeline(built.embedder, built.store)
        with pytest.raises(ConfigError, match="from_config"):
            by_hand.add_files(photo_paths[:1], executor=RayExecutor())
        with pytest.raises(ConfigError, match="workers"):
            built.scan_videos([], executor=RayExecutor(), workers=2)
    with pytest.raises(ConfigError, match="workers"):
        RayExecutor(workers=0)


@pytest.mark.slow
def test_local_and_ray_execution_are_one_api_with_one_outcome(photo_paths: list[Path], tmp_path: Path) -> None:
    """The same ``add_files`` call, in this process and on a local Ray (2 CPUs): the same references added,
    the same duplicates and failures, on a rerun nothing new, and the same vectors in the store."""
    ray = pytest.importorskip("ray")
    files = _inputs(photo_paths, tmp_path)
    outcomes, vectors = {}, {}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        for name, executor in (("local", None), ("ray", RayExecutor(workers=1))):
            with Pipeline.from_config(_config(tmp_path, name), create_store=True) as pipeline:
                first, again = _add_twice(pipeline, files, executor)
                outcomes[name] = (_outcome(first), _outcome(again))
                ids = sorted(first.added, key=lambda added: added[1].sha256)
                vectors[name] = pipeline.store.fetch_vectors([ref_id for ref_id, _ in ids])
    finally:
        ray.shutdown()
    assert outcomes["ray"] == outcomes["local"]
    assert len(outcomes["ray"][0][0]) == 4 and outcomes["ray"][1][0] == []
    np.testing.assert_allclose(vectors["ray"], vectors["local"], atol=1e-4)
