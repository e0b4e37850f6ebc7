"""``evaluate`` and ``calibrate`` report what their folder scans skip and exit 4, after doing the rest."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from id2_plugin.testing import reupload_jpeg

#: the cheapest embedder the commands accept: the raw TAEF2 latent at 64 px
SMALL = ["--set", "embedder.input_size=64", "--set", "embedder.device=cpu"]


def _invoke(args: list[str]):
    from id2_plugin.cli import cli, load_commands

    load_commands()
    return CliRunner().invoke(cli, args, catch_exceptions=False)


@pytest.fixture()
def scan_case(photo_paths: list[Path], tmp_path: Path) -> dict[str, Path]:
    """Three (re-uploaded copy, origin) pairs, and a folder of real photos holding one dangling link."""
    lines = []
    for p in photo_paths[200:203]:
        q = tmp_path / f"{p.stem}_copy.jpg"
        q.write_bytes(reupload_jpeg(p))
        lines.append(json.dumps({"query": str(q), "origin": str(p)}) + "\n")
    manifest = tmp_path / "pairs.jsonl"
    manifest.write_text("".join(lines))
    folder = tmp_path / "more"
    folder.mkdir()
    for p in photo_paths[300:310]:
        os.symlink(p, folder / p.name)
    gone = folder / "gone.jpg"
    os.symlink(tmp_path / "deleted.jpg", gone)
    return {"pairs": manifest, "folder": folder, "gone": gone}


def test_evaluate_reports_a_dangling_distractor_link_and_exits_4(scan_case) -> None:
    res = _invoke(
        [
            *SMALL,
            "evaluate",
            "--projection",
            "none",
            "--pairs",
            str(scan_case["pairs"]),
            "--distractors",
            str(scan_case["folder"]),
            "--method",
            "pdq",
            "--json",
        ]
    )
    assert res.exit_code == 4, res.output
    line = f"skipped {scan_case['gone']}: dangling symbolic link"
    assert line in res.stderr
    out = json.loads(res.stdout)
    assert out["skipped"] == [line]
    assert (out["n_queries"], out["n_references"]) == (3, 13)  # every readable distractor still used
    assert out["methods"]["pdq"]["top1"] == 1.0


def test_calibrate_reports_a_dangling_negative_link_writes_the_config_and_exits_4(scan_case, tmp_path: Path) -> None:
    from id2_plugin.config import load_config

    out = tmp_path / "cal.yaml"
    res = _invoke(
        [
            *SMALL,
            "calibrate",
            "--projection",
            "none",
            "--pairs",
            str(scan_case["pairs"]),
            "--negatives",
            str(scan_case["folder"]),
            "--target-fpr",
            "0.5",
            "--out",
            str(out),
            "--json",
        ]
    )
    assert res.exit_code == 4, res.output
    line = f"skipped {scan_case['gone']}: dangling symbolic link"
    assert line in res.stderr
    doc = json.loads(res.stdout)
    assert doc["skipped"] == [line] and doc["n_neg"] == 10
    assert load_config(out).calibration.n_neg == 10
