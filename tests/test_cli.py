"""The core CLI on real photos: index add/info/remove, query, embed, config show, exit codes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from id2_plugin.cli import _load_plugin_commands, cli


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    _load_plugin_commands()
    return CliRunner()


@pytest.fixture(scope="module")
def library(photo_paths: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lib")
    (root / "sub").mkdir()
    for p in photo_paths[100:106]:
        shutil.copy(p, root / p.name)
    for p in photo_paths[106:110]:
        shutil.copy(p, root / "sub" / p.name)
    (root / "sub" / "broken.jpg").write_bytes(photo_paths[0].read_bytes()[:500])
    return root


def invoke(runner: CliRunner, store: Path, *args: str):
    return runner.invoke(cli, ["--set", f"store.path={store}", *args], catch_exceptions=False)


def test_index_query_remove_cycle(runner: CliRunner, library: Path, tmp_path: Path, photo_paths: list[Path]) -> None:
    store = tmp_path / "store"
    res = invoke(runner, store, "index", "add", str(library))
    assert res.exit_code == 1, res.output  # one broken file: reported and skipped, the rest indexed
    assert "broken.jpg" in res.output and "added 10" in res.output
    again = invoke(runner, store, "index", "add", str(library / "sub"))
    assert "added 0" in again.output and "duplicates skipped 4" in again.output

    info = json.loads(invoke(runner, store, "index", "info", "--json").output)
    # the default embedder: id2 (TAEF2 + W) fused with SSCD, since the SSCD model resolves here
    assert info["count"] == 10 and info["backend"] == "faiss" and info["embedder"].startswith("fused[id2=")
    assert info["method"].startswith("fused (id2 ") and "sscd" in info["method"]

    query_img = tmp_path / "q.jpg"
    Image.open(photo_paths[102]).convert("RGB").resize((200, 150)).save(query_img, quality=40)
    res = invoke(runner, store, "query", "--json", "--k", "3", "--threshold", "0", str(query_img))
    assert res.exit_code == 0, res.output
    report = json.loads(res.output.strip().splitlines()[-1])
    assert Path(report["best"]["uri"]).name == photo_paths[102].name and len(report["matches"]) == 3
    # per-signal evidence: the fused score is the weighted mean of the signals' own cosines
    from id2_plugin.identify import load_fusion

    weights = load_fusion("default").weights
    for m in report["matches"]:
        assert set(m["signals"]) == {"id2", "sscd"}
        assert m["score"] == pytest.approx(sum(weights[k] * v for k, v in m["signals"].items()), abs=1e-3)
    assert report["best"]["signals"]["sscd"] > 0.5

    res = invoke(runner, store, "query", "--threshold", "0.99999", str(photo_paths[700]), str(library / "sub" / "broken.jpg"))
    assert res.exit_code == 1 and "NO_MATCH" in res.output and "ERROR" in res.output

    res = invoke(runner, store, "index", "remove", str(library / photo_paths[102].name))
    assert res.exit_code == 0 and "removed 1" in res.output
    res = invoke(runner, store, "query", "--json", "--threshold", "0", str(query_img))
    assert Path(json.loads(res.output.splitlines()[-1])["best"]["uri"]).name != photo_paths[102].name
    assert invoke(runner, store, "index", "remove", "no-such-id").exit_code == 1


def test_embed_to_npz(runner: CliRunner, library: Path, tmp_path: Path) -> None:
    out = tmp_path / "e.npz"
    res = runner.invoke(cli, ["embed", str(library / "sub"), "--out", str(out)])
    assert res.exit_code == 1  # broken.jpg
    data = np.load(out)
    assert data["embeddings"].shape[0] == 4 and np.allclose(np.linalg.norm(data["embeddings"], axis=1), 1, atol=1e-5)


def test_usage_and_config_errors(runner: CliRunner, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("match:\n  kk: 1\n")
    res = runner.invoke(cli, ["--config", str(bad), "config", "show"])
    assert res.exit_code == 2 and "match.kk" in res.output
    res = runner.invoke(cli, ["--set", "match.k=4", "config", "show"])
    assert res.exit_code == 0 and "k: 4" in res.output
    res = runner.invoke(cli, ["--set", f"store.path={tmp_path / 'none'}", "query", str(tmp_path)])
    assert res.exit_code == 2 and "store" in res.output.lower()
    assert runner.invoke(cli, ["query"]).exit_code == 2
    res = runner.invoke(cli, ["--set", "embedder.name=nope", "embed", str(tmp_path), "--out", str(tmp_path / "x.npz")])
    assert res.exit_code == 2 and "not registered" in res.output


def test_console_script_runs() -> None:
    exe = Path(sys.executable).with_name("id2-plugin")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "id2_plugin.cli"]
    out = subprocess.run([*cmd, "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "index" in out.stdout and "query" in out.stdout


def test_quantize_needs_a_folder_to_write_to(runner: CliRunner, photo_paths: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --out or $ID2_MODELS_DIR the int8 model has nowhere the user named: a usage error, nothing written."""
    monkeypatch.delenv("ID2_MODELS_DIR", raising=False)
    result = runner.invoke(cli, ["quantize", str(photo_paths[0])], catch_exceptions=False)
    assert result.exit_code == 2 and "--out" in result.output
