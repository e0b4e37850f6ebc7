"""Attacks registered by plugins, and the ``id2-plugin robustness`` command (hash methods: fast)."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import id2_plugin
from id2_plugin.errors import ConfigError
from id2_plugin.plugins import attack_factories, get_plugin_manager
from id2_plugin.robustness import Attack, FunctionAttack, default_suite, parse_attack_spec


def _noise(rgb: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    return np.clip(rgb + rng.normal(0.0, sigma, rgb.shape), 0, 255).astype(np.uint8)


class NoisePlugin:
    """A third-party plugin adding a Gaussian-noise attack."""

    @id2_plugin.hookimpl
    def id2_register_attacks(self, register):
        register("noise", lambda intensity: FunctionAttack("noise", intensity, _noise))


class ClashingPlugin:
    @id2_plugin.hookimpl
    def id2_register_attacks(self, register):
        register("jpeg", lambda intensity: FunctionAttack("jpeg", intensity, _noise))


@pytest.fixture()
def noise_plugin():
    pm = get_plugin_manager()
    plugin = NoisePlugin()
    pm.register(plugin, name="test-noise-attack")
    try:
        yield plugin
    finally:
        pm.unregister(plugin)


def test_builtin_attacks_register_through_the_hook():
    factories = attack_factories()
    assert {"jpeg", "blur", "downscale", "crop", "watermark_text", "watermark_logo"} <= set(factories)
    for entry in default_suite():
        for attack in entry.levels:
            step = getattr(attack, "b", attack)
            built = factories[step.name](step.intensity)
            assert isinstance(built, Attack) and built.label == step.label
    assert "noise" not in factories


def test_plugin_registers_a_new_attack(noise_plugin, photo_paths):
    factories = attack_factories()
    assert "noise" in factories
    attack = factories["noise"](12.0)
    img = np.asarray(id2_plugin.load_image(photo_paths[0]))
    out = attack(img, 3)
    assert out.shape == img.shape and np.array_equal(out, attack(img, 3)) and not np.array_equal(out, attack(img, 4))
    entry = parse_attack_spec("noise:4,16", factories)
    assert [a.label for a in entry.levels] == ["noise:4", "noise:16"]
    chain = parse_attack_spec("downscale:0.5+noise:8", factories)
    assert chain.levels[0].label == "downscale:0.5+noise:8"


def test_duplicate_attack_name_is_a_config_error():
    pm = get_plugin_manager()
    plugin = ClashingPlugin()
    pm.register(plugin, name="test-clash")
    try:
        with pytest.raises(ConfigError, match="jpeg"):
            attack_factories()
    finally:
        pm.unregister(plugin)


# ------------------------------------------------------------------------------------------------ CLI
@pytest.fixture(scope="module")
def cli():
    from id2_plugin.cli import cli, load_commands

    load_commands()
    return cli


def _link(paths: list[Path], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for p in paths:
        os.symlink(p, folder / p.name)
    return folder


def test_cli_photos_with_plugin_attack(cli, noise_plugin, photo_paths, tmp_path):
    photos = _link(photo_paths[10::90][:6], tmp_path / "photos")
    distractors = _link(photo_paths[20::45][:10], tmp_path / "distractors")
    out = tmp_path / "out"
    res = CliRunner().invoke(
        cli,
        [
            "robustness",
            "--photos",
            str(photos),
            "--distractors",
            str(distractors),
            "--distractors",
            str(photos),
            "--out",
            str(out),
            "--methods",
            "pdq,phash",
            "--attack",
            "noise:8,40",
            "--attack",
            "crop:0.9,0.7,0.5",
            "--levels",
            "2",
            "--seed",
            "5",
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    assert {p.name for p in out.iterdir()} == {"report.json", "curves.csv", "report.html", "report.pdf"}
    data = json.loads((out / "report.json").read_text())
    assert data["dataset"]["n_queries"] == 6 and data["dataset"]["n_references"] == 16  # queries not re-added
    labels = {p["label"] for p in data["points"]}
    assert labels == {"clean", "noise:8", "noise:40", "crop:0.7", "crop:0.5"}
    assert {p["series"] for p in data["points"]} == {"pdq", "phash"}
    assert data["provenance"]["seed"] == 5 and "robustness" in data["provenance"]["command"]
    assert "top-1 accuracy" in res.output and "noise:40" in res.output
    queries = data["provenance"]["queries"]
    assert len(queries) == 6 and all(len(q["sha256"]) == 64 for q in queries)
    # The recorded command is a real one: run again as recorded (into another folder), same curves.
    words = shlex.split(data["provenance"]["command"])
    assert words[:2] == ["id2-plugin", "robustness"] and "--levels" in words
    words[words.index("--out") + 1] = str(tmp_path / "again")
    again = CliRunner().invoke(cli, words[1:])
    assert again.exit_code == 0, again.output
    rerun = json.loads((tmp_path / "again" / "report.json").read_text())["points"]
    assert [(p["series"], p["label"], p["top1"], p["mAP"]) for p in rerun] == [
        (p["series"], p["label"], p["top1"], p["mAP"]) for p in data["points"]
    ]


def test_cli_pairs_manifest(cli, real_edits_dir, photo_paths, tmp_path):
    distractors = _link(photo_paths[::80][:8], tmp_path / "distractors")
    out = tmp_path / "out"
    res = CliRunner().invoke(
        cli,
        [
            "robustness",
            "--pairs",
            str(real_edits_dir / "pairs.jsonl"),
            "--distractors",
            str(distractors),
            "--out",
            str(out),
            "--methods",
            "pdq",
            "--attack",
            "jpeg:30",
            "--no-pdf",
            "--limit",
            "10",
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    data = json.loads((out / "report.json").read_text())
    assert data["dataset"]["kind"] == "pairs" and data["dataset"]["n_queries"] == 10
    n_origins = data["dataset"]["n_references"] - data["dataset"]["n_distractors"]
    assert 1 <= n_origins <= 10 and data["dataset"]["n_distractors"] == 8
    assert not (out / "report.pdf").exists()
    assert {p["label"] for p in data["points"]} == {"clean", "jpeg:30"}


def test_cli_reports_a_dangling_link_in_a_scanned_folder_and_exits_4(cli, photo_paths, tmp_path):
    photos = _link(photo_paths[30:33], tmp_path / "photos")
    distractors = _link(photo_paths[40:43], tmp_path / "distractors")
    os.symlink(tmp_path / "deleted.jpg", distractors / "gone.jpg")
    out = tmp_path / "out"
    res = CliRunner().invoke(
        cli,
        [
            "robustness",
            "--photos",
            str(photos),
            "--distractors",
            str(distractors),
            "--out",
            str(out),
            "--methods",
            "pdq",
            "--attack",
            "jpeg:30",
            "--no-pdf",
            "--quiet",
        ],
    )
    assert res.exit_code == 4, res.output
    assert f"skipped {distractors / 'gone.jpg'}: dangling symbolic link" in res.stderr
    data = json.loads((out / "report.json").read_text())  # the rest was still measured and reported
    assert data["dataset"]["n_queries"] == 3 and data["dataset"]["n_distractors"] == 3
    assert any("gone.jpg: dangling symbolic link" in note for note in data["notes"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--out", "x"], "exactly one of"),
        (["--photos", ".", "--pairs", "pyproject.toml", "--out", "x"], "exactly one of"),
        (["--photos", ".", "--out", "x", "--attack", "nope:1"], "unknown attack"),
        (["--photos", ".", "--out", "x", "--attack", "jpeg:500"], "quality"),
        (["--photos", ".", "--out", "x", "--methods", "id2", "--projection", "none"], "needs a projection W"),
    ],
)
def test_cli_usage_errors(cli, args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    res = CliRunner().invoke(cli, ["robustness", *args])
    assert res.exit_code == 2, res.output
    assert message in res.output
