"""The ``evaluate`` and ``calibrate`` use cases called as library functions on real photos: what the commands
run, without the command line (the commands' own tests check their printing and exit codes)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from id2_plugin import CalibrationRun, EvaluationRun, load_config, run_calibration, run_evaluation


@pytest.fixture()
def raw_latent_config():
    """The cheap configuration the command tests use: the raw TAEF2 latent (no W), latents cached per session."""
    return load_config(
        overrides={"embedder": {"projection": "none"}, "cache": {"dir": os.environ["ID2_TEST_CACHE_DIR"]}}
    )


@pytest.fixture()
def unrelated(shared_dir: Path) -> list[Path]:
    return sorted((shared_dir / "data" / "unrelated").glob("*.jpg"))


def test_run_evaluation_on_real_edits(
    raw_latent_config, real_edits_dir: Path, photo_paths: list[Path], unrelated: list[Path], tmp_path: Path
) -> None:
    problems: list[str] = []
    per_query = tmp_path / "per-query.jsonl"
    run = run_evaluation(
        raw_latent_config,
        real_edits_dir / "pairs.jsonl",
        distractors=photo_paths[:10],
        negatives=unrelated[:8],
        methods=["vae_raw", "pdq"],
        k=5,
        per_query=per_query,
        report=problems.append,
    )
    assert isinstance(run, EvaluationRun) and run.default == "vae_raw"
    # windows on (the default): the whole-image score of the default method is reported beside it
    assert set(run.methods) == {"vae_raw", "vae_raw_whole", "pdq"}
    assert (run.n_queries, run.n_negatives, run.k) == (27, 8, 5) and run.n_references == run.n_origins + 10
    assert run.skipped == [] and problems == [] and run.bits == {"pdq": 256}
    assert {"source"} <= set(run.by_group) and len(run.by_group["source"]) > 1
    assert run.methods["vae_raw"].top1 > run.methods["pdq"].top1  # diffusion edits defeat a perceptual hash
    decided = run.decisions["vae_raw"]
    assert (decided["n_edits"], decided["n_unrelated"]) == (27, 8) and decided["threshold"] == run.threshold
    doc = json.loads(json.dumps(run.to_dict()))  # the --json document
    assert doc["methods"]["pdq"]["n_bits"] == 256 and doc["decisions"]["vae_raw"]["matched"] == decided["matched"]
    assert doc["per_query"] == str(per_query) and "per_source" in doc
    assert len(per_query.read_text().splitlines()) == 3 * (27 + 8)  # one record per query and method


def test_run_calibration_on_real_edits(
    raw_latent_config, real_edits_dir: Path, unrelated: list[Path], tmp_path: Path
) -> None:
    out, per_query = tmp_path / "cal.yaml", tmp_path / "pq.jsonl"
    run = run_calibration(
        raw_latent_config, real_edits_dir / "pairs.jsonl", unrelated[:60], target_fpr=0.05, out=out, per_query=per_query
    )
    assert isinstance(run, CalibrationRun) and run.out == out and run.bits == {} and run.skipped == []
    cal = run.calibration
    assert (cal.n_pos, cal.n_neg, cal.target) == (27, 60, "fpr") and cal.fpr_upper_bound <= 0.05
    assert run.identity == run.config["calibration"]["embedder"]
    written = load_config(out)  # the config the command writes, loadable with --config
    assert written.match.threshold == pytest.approx(cal.threshold) and written.embedder.projection == "none"
    records = [json.loads(line) for line in per_query.read_text().splitlines()]
    assert sum(r["kind"] == "negative" for r in records) == 60
    assert run.to_dict()["out"] == str(out) and run.to_dict()["threshold"] == cal.threshold
    with pytest.raises(Exception, match="need at least"):  # too few negatives for the default 1e-3 target
        run_calibration(raw_latent_config, real_edits_dir / "pairs.jsonl", unrelated[:60])
