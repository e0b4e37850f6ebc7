"""The application layer built from a config, as a library user builds it."""

from __future__ import annotations

import hashlib
from pathlib import Path

from id2_plugin.config import load_config
from id2_plugin.pipeline import Pipeline, Upload


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
