"""The latent cache is opt-in: by default evaluate / calibrate leave nothing under HOME or XDG_CACHE_HOME."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from id2_plugin.cli import cli, load_commands

# ONNX Runtime (SSCD's runtime) writes a random telemetry device id there; it holds nothing of the images.
THIRD_PARTY = "Microsoft/DeveloperTools/.onnxruntime/"


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".xdg-cache"))
    monkeypatch.delenv("ID2_CACHE_DIR", raising=False)
    return home


@pytest.fixture()
def small_set(real_edits_dir: Path, photo_paths: list[Path], tmp_path: Path) -> dict[str, Path]:
    """Two real edits with their origins, three distractor photos, three negatives (copied: paths are ours)."""
    root = tmp_path / "data"
    lines = [json.loads(s) for s in (real_edits_dir / "pairs.jsonl").read_text().splitlines()[:2]]
    for d in lines:
        for key in ("query", "origin"):
            (root / d[key]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(real_edits_dir / d[key], root / d[key])
    (root / "pairs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in lines))
    for name, sel in (("distractors", photo_paths[200:203]), ("negatives", photo_paths[300:303])):
        (root / name).mkdir()
        for p in sel:
            shutil.copy(p, root / name / p.name)
    return {"pairs": root / "pairs.jsonl", "distractors": root / "distractors", "negatives": root / "negatives"}


def _written(home: Path) -> list[str]:
    files = [p.relative_to(home).as_posix() for p in home.rglob("*") if p.is_file()]
    return [f for f in files if THIRD_PARTY not in f]


@pytest.mark.slow  # two commands, each loading TAEF2 and SSCD
def test_evaluate_and_calibrate_write_nothing_under_home(
    home: Path, small_set: dict[str, Path], tmp_path: Path
) -> None:
    load_commands()
    runner = CliRunner()
    base = ["--set", "embedder.name=taef2"]
    res = runner.invoke(
        cli,
        [
            *base,
            "evaluate",
            "--pairs",
            str(small_set["pairs"]),
            "--distractors",
            str(small_set["distractors"]),
            "--method",
            "id2",
            "--json",
        ],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        cli,
        [
            *base,
            "calibrate",
            "--pairs",
            str(small_set["pairs"]),
            "--negatives",
            str(small_set["negatives"]),
            "--distractors",
            str(small_set["distractors"]),
            "--target-precision",
            "0.5",
            "--out",
            str(tmp_path / "cal.yaml"),
        ],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    assert _written(home) == []


@pytest.mark.slow
def test_opt_in_cache_is_used_then_purged(home: Path, small_set: dict[str, Path], tmp_path: Path) -> None:
    load_commands()
    runner = CliRunner()
    cache = tmp_path / "my-cache"
    args = [
        "--set",
        "embedder.name=taef2",
        "evaluate",
        "--pairs",
        str(small_set["pairs"]),
        "--distractors",
        str(small_set["distractors"]),
        "--method",
        "vae_raw",
        "--json",
        "--cache",
        str(cache),
    ]
    first = runner.invoke(cli, args, catch_exceptions=False)
    assert first.exit_code == 0, first.output
    cached = sorted(cache.rglob("*.npy"))
    assert len(cached) == 6  # 2 queries of one origin + that origin + 3 distractors, one latent each
    assert np.load(cached[0]).shape == (32 * 32 * 32,)
    assert _written(home) == []
    res = runner.invoke(cli, ["cache", "purge", "--cache", str(cache), "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["removed"][str(cache)] == 6
    assert not list(cache.rglob("*.npy"))


def test_purge_removes_what_earlier_releases_left_in_the_user_cache(home: Path) -> None:
    legacy = home / ".xdg-cache" / "id2_plugin" / "latents" / "taef2@x" / "ab"
    legacy.mkdir(parents=True)
    np.save(legacy / "ab12.npy", np.zeros(4, np.float16))
    load_commands()
    res = CliRunner().invoke(cli, ["cache", "purge"], catch_exceptions=False)
    assert res.exit_code == 0 and "removed 1 cached latent" in res.output
    assert not (home / ".xdg-cache" / "id2_plugin").exists()
