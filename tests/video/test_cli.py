"""``id2-plugin scan-video``: folders, streamed JSON Lines / CSV output, exit codes."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner


@pytest.fixture(scope="module")
def cli():
    from id2_plugin.cli import cli, load_commands

    load_commands()
    return cli


@pytest.fixture(scope="module")
def video_folder(scene, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scene.mp4, a nested corrupt .mkv (a Matroska magic number and nothing else) and a text file to skip."""
    root = tmp_path_factory.mktemp("cli-videos")
    (root / "nested").mkdir()
    shutil.copy(scene.path, root / "scene.mp4")
    (root / "nested" / "broken.mkv").write_bytes(b"\x1aE\xdf\xa3" + b"\x00" * 300)
    (root / "nested" / "notes.txt").write_text("not a video")
    return root


def _base_args(ref_store) -> list[str]:
    return [
        "--set",
        "embedder.device=cpu",
        "--set",
        "embedder.allow_raw_latent=true",
        "scan-video",
        "--store",
        str(ref_store.location),
        "--projection",
        "none",
        "--threshold",
        "0.5",
    ]


def test_scan_folder_json_lines_to_file(cli, ref_store, video_folder: Path, scene, tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    result = CliRunner().invoke(
        cli, [*_base_args(ref_store), str(video_folder), "--json", "--out", str(out), "--workers", "2", "--k", "2"]
    )
    assert result.exit_code == 4, result.output  # the broken video failed
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    by_name = {Path(d["path"]).name: d for d in lines}
    assert set(by_name) == {"scene.mp4", "broken.mkv"}
    good, bad = by_name["scene.mp4"], by_name["broken.mkv"]
    assert good["ok"] and [round(h["timestamp"], 3) for h in good["hits"]] == [0.0, 2.0, 4.0]
    assert {s["uri"] for s in good["summary"]} == {str(scene.refs[i]) for i in range(3)}
    assert all(len(h["matches"]) <= 2 for h in good["hits"])
    assert not bad["ok"] and bad["error_kind"] in ("not_a_video", "corrupt", "truncated") and bad["hits"] == []
    assert "broken.mkv" in result.stderr and "scanned 2 videos, 1 failed" in result.stderr


def test_scan_csv_fps_mode_to_stdout(cli, ref_store, scene) -> None:
    result = CliRunner().invoke(cli, [*_base_args(ref_store), str(scene.path), "--csv", "--fps", "1", "--k", "1"])
    assert result.exit_code == 0, result.stderr
    rows = list(csv.DictReader(result.stdout.splitlines()))
    assert [(r["timestamp"], r["until"], r["uri"]) for r in rows] == [
        ("0.000", "2.000", str(scene.refs[0])),
        ("2.000", "4.000", str(scene.refs[1])),
        ("4.000", "6.000", str(scene.refs[2])),
    ]
    assert all(float(r["score"]) >= 0.5 and r["error"] == "" for r in rows)


def test_usage_errors(cli, ref_store, scene, tmp_path: Path) -> None:
    runner = CliRunner()
    bad = runner.invoke(cli, [*_base_args(ref_store), str(scene.path), "--keyframes", "--fps", "2"])
    assert bad.exit_code == 2 and "alternatives" in bad.output
    empty = tmp_path / "empty-folder"
    empty.mkdir()
    none = runner.invoke(cli, [*_base_args(ref_store), str(empty)])
    assert none.exit_code == 2 and "no video files" in none.stderr
    missing_store = runner.invoke(cli, ["scan-video", "--store", str(tmp_path / "nostore"), str(scene.path)])
    assert missing_store.exit_code == 3 and "no reference store" in missing_store.stderr
    gone = runner.invoke(cli, ["scan-video", "--store", str(tmp_path / "nostore"), str(tmp_path / "gone.mp4")])
    assert gone.exit_code == 4 and "gone.mp4: not found" in gone.stderr  # before the store and the model
