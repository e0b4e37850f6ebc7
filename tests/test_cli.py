"""The core CLI on real photos: index add/info/remove, query, embed, config show, exit codes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from id2_plugin.cli import cli, load_commands


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    load_commands()
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
    assert res.exit_code == 4, res.output  # one broken file: reported and skipped, the rest indexed
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
    # per-signal evidence: the store's fused cosine is the weighted mean of the signals' own cosines
    from id2_plugin.assembly import load_fusion

    weights = load_fusion("default").weights
    for m in report["matches"]:
        assert set(m["signals"]) == {"id2", "sscd"}
        assert m["cosine"] == pytest.approx(sum(weights[k] * v for k, v in m["signals"].items()), abs=1e-3)
    assert report["best"]["signals"]["sscd"] > 0.5

    # "no match" and "unreadable" are told apart; an unreadable input wins, the answer being incomplete
    res = invoke(runner, store, "query", "--threshold", "0.99999", str(photo_paths[700]))
    assert res.exit_code == 1 and "NO_MATCH" in res.output and "ERROR" not in res.output
    res = invoke(
        runner, store, "query", "--threshold", "0.99999", str(photo_paths[700]), str(library / "sub" / "broken.jpg")
    )
    assert res.exit_code == 4 and "NO_MATCH" in res.output and "ERROR" in res.output

    # a copy turned 90 degrees clockwise: found upright once --rotations lets the query be turned back
    turned = tmp_path / "turned.jpg"
    Image.open(photo_paths[104]).convert("RGB").rotate(-90, expand=True).save(turned, quality=90)
    res = invoke(runner, store, "query", "--rotations", "0,90,180,270", "--k", "2", str(turned))
    assert (
        res.exit_code == 0
        and "(rot90)" in res.output.splitlines()[1]
        and photo_paths[104].name in res.output.splitlines()[1]
    )
    assert invoke(runner, store, "query", "--rotations", "0,45", str(turned)).exit_code == 2

    res = invoke(runner, store, "index", "remove", str(library / photo_paths[102].name))
    assert res.exit_code == 0 and "removed 1" in res.output
    res = invoke(runner, store, "query", "--json", "--threshold", "0", str(query_img))
    assert Path(json.loads(res.output.splitlines()[-1])["best"]["uri"]).name != photo_paths[102].name
    assert invoke(runner, store, "index", "remove", "no-such-id").exit_code == 1


def test_embed_to_npz(runner: CliRunner, library: Path, tmp_path: Path) -> None:
    out = tmp_path / "e.npz"
    res = runner.invoke(cli, ["embed", str(library / "sub"), "--out", str(out)])
    assert res.exit_code == 4  # broken.jpg
    data = np.load(out)
    assert data["embeddings"].shape[0] == 4 and np.allclose(np.linalg.norm(data["embeddings"], axis=1), 1, atol=1e-5)


def test_usage_and_config_errors(runner: CliRunner, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("match:\n  kk: 1\n")
    res = runner.invoke(cli, ["--config", str(bad), "config", "show"])
    assert res.exit_code == 2 and "match.kk" in res.output
    res = runner.invoke(cli, ["--set", "match.k=4", "config", "show"])
    assert res.exit_code == 0 and "k: 4" in res.output
    res = runner.invoke(cli, ["--set", "serve.token=tok-31337", "--set", "store.api_key=key-4242", "config", "show"])
    assert res.exit_code == 0 and "tok-31337" not in res.output and "key-4242" not in res.output
    assert res.output.count("'***'") == 2
    Image.new("RGB", (32, 32), "gray").save(tmp_path / "q.png")
    res = runner.invoke(cli, ["--set", f"store.path={tmp_path / 'none'}", "query", str(tmp_path / "q.png")])
    assert res.exit_code == 3 and "store" in res.output.lower()  # store errors: exit 3
    assert runner.invoke(cli, ["query"]).exit_code == 2
    res = runner.invoke(cli, ["--set", "embedder.name=nope", "embed", str(tmp_path), "--out", str(tmp_path / "x.npz")])
    assert res.exit_code == 2 and "not registered" in res.output


def test_console_script_runs() -> None:
    exe = Path(sys.executable).with_name("id2-plugin")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "id2_plugin.cli"]
    out = subprocess.run([*cmd, "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "index" in out.stdout and "query" in out.stdout


def _command_tree(**env: str) -> dict[str, list[str]]:
    """Every top-level command, with its subcommands, as a fresh process with ``env`` loads them."""
    code = (
        "import json; from id2_plugin.cli import cli, load_commands; load_commands(); "
        "print(json.dumps({n: sorted(getattr(c, 'commands', {})) for n, c in cli.commands.items()}))"
    )
    full_env = {k: v for k, v in os.environ.items() if k not in ("ID2_LOAD_PLUGINS", "ID2_DISABLE_PLUGINS")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**full_env, **env})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_disabling_one_builtin_command_plugin_drops_only_its_commands() -> None:
    full = _command_tree()
    assert full["index"] == ["add", "add-ray", "compact", "info", "remove", "tune", "verify"]
    no_maintenance = _command_tree(ID2_DISABLE_PLUGINS="store_commands")
    assert no_maintenance == dict(full, index=["add", "add-ray", "info", "remove"])
    no_index = _command_tree(ID2_DISABLE_PLUGINS="index_commands")
    assert no_index == dict(full, index=["add-ray", "compact", "tune", "verify"])
    no_query = _command_tree(ID2_DISABLE_PLUGINS="query_commands")
    assert set(full) - set(no_query) == {"query", "embed"} and no_query["index"] == full["index"]


def test_serve_without_the_http_extra_names_it(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fastapi", None)  # what an install without [http] looks like to import
    res = runner.invoke(cli, ["serve"])
    assert res.exit_code == 2 and "id2-plugin[http]" in res.output and "Traceback" not in res.output


def _sscd(runner: CliRunner, store: Path, *args: str):
    """The CLI with the (fast) SSCD embedder: these tests are about files and exit codes, not the signal."""
    return runner.invoke(cli, ["--set", f"store.path={store}", "--set", "embedder.name=sscd", *args])


def test_truncated_store_is_refused_reported_and_repaired(
    runner: CliRunner, photo_paths: list[Path], tmp_path: Path
) -> None:
    store = tmp_path / "store"
    assert _sscd(runner, store, "index", "add", *map(str, photo_paths[:4])).exit_code == 0
    raw = next(store.glob("vectors.*"))
    size = raw.stat().st_size
    os.truncate(raw, size // 2)
    res = _sscd(runner, store, "index", "add", str(photo_paths[4]))
    assert res.exit_code == 3 and "damaged" in res.output and "Traceback" not in res.output
    assert raw.stat().st_size == size // 2  # nothing appended past the truncated end
    info = _sscd(runner, store, "index", "info")
    assert info.exit_code == 3 and "status: damaged: vectors.0.f32 holds 2 of the 4" in info.output
    assert _sscd(runner, store, "index", "verify").exit_code == 3
    fixed = _sscd(runner, store, "index", "verify", "--repair")
    assert fixed.exit_code == 0 and "dropped 2 reference(s)" in fixed.output and "store is sound" in fixed.output
    res = _sscd(runner, store, "index", "add", *map(str, photo_paths[:5]))
    assert res.exit_code == 0 and "added 3, duplicates skipped 2" in res.output  # the lost ones come back


def test_unwalkable_paths_are_reported_and_the_rest_indexed(
    runner: CliRunner, photo_paths: list[Path], tmp_path: Path
) -> None:
    root = tmp_path / "lib"
    (root / "sub").mkdir(parents=True)
    shutil.copy(photo_paths[0], root / "a.jpg")
    shutil.copy(photo_paths[1], root / "sub" / "b.jpg")
    (root / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (root / "sub" / "up").symlink_to(root)  # a loop: walking it would never end
    locked = root / "locked"
    locked.mkdir()
    shutil.copy(photo_paths[2], locked / "c.jpg")
    locked.chmod(0)
    try:
        res = _sscd(runner, tmp_path / "store", "index", "add", str(tmp_path / "missing.jpg"), str(root))
    finally:
        locked.chmod(0o755)
    assert res.exit_code == 4, res.output
    assert "missing.jpg: not found" in res.output and "gone.jpg: dangling symbolic link" in res.output
    assert "up: symbolic link loop" in res.output
    if os.geteuid() != 0:  # root reads a mode-000 folder anyway
        assert "locked: cannot read folder" in res.output
    assert "added 2" in res.output or "added 3" in res.output


@pytest.mark.parametrize(
    "args,message",
    [
        (["index", "add", "--commit-every", "0", "x.jpg"], "--commit-every"),
        (["--config", "binary.yaml", "config", "show"], "is not a UTF-8 text (YAML) file"),
        (["--config", "broken.yaml", "config", "show"], "is not valid YAML"),
        (["--set", "match.k=[", "config", "show"], "the value is not valid YAML"),
        (
            ["--config", "deep.yaml", "config", "show"],
            "deep.yaml is not accepted: line 1 is nested more than 32 levels",
        ),
        (["--config", "bomb.yaml", "config", "show"], "bomb.yaml is not accepted: line 4 uses a YAML alias (*name)"),
        (["--config", "twice.yaml", "config", "show"], "twice.yaml is not accepted: line 3 repeats the key 'k'"),
        (["--set", "serve.port=99999", "config", "show"], "serve.port=99999: expected a TCP port, 0 to 65535"),
        (["--set", "media.max_pixels=-1", "config", "show"], "media.max_pixels=-1: must lie in [1, "),
        (["--set", "media.max_pixels=1000000000", "config", "show"], "media.max_pixels=1000000000: must lie in [1, "),
        (
            [
                "--set",
                "embedder.name=taef2",
                "--set",
                "embedder.weights=pickle.pkl",
                "embed",
                "x.jpg",
                "--out",
                "o.npz",
            ],
            "never unpickled",
        ),
        (
            [
                "--set",
                "embedder.name=taef2",
                "--set",
                "embedder.weights=bad.safetensors",
                "embed",
                "x.jpg",
                "--out",
                "o.npz",
            ],
            "is not a TAEF2 weights file",
        ),
        (
            ["--set", "embedder.name=taef2", "--set", "embedder.weights=other.pth", "embed", "x.jpg", "--out", "o.npz"],
            "do not match the architecture",
        ),
        (["--set", "embedder.name=sscd", "index", "add", "empty"], "no image files found in empty"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_2(
    runner: CliRunner,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    photo_paths: list[Path],
    args: list[str],
    message: str,
) -> None:
    import pickle

    import torch

    monkeypatch.chdir(tmp_path)
    shutil.copy(photo_paths[0], "x.jpg")
    Path("binary.yaml").write_bytes(b"\xff\xfe\x00\x01 not text")
    Path("broken.yaml").write_text("match: [\n")
    Path("deep.yaml").write_text("a: " + "[" * 1000 + "]" * 1000 + "\n")
    # a billion laughs, cut to 9^5 strings: the full one ran past 60 s and 6 GB
    levels = [f"    l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 6)]
    Path("bomb.yaml").write_text("store:\n  index_options:\n    l0: &l0 [lol]\n" + "\n".join(levels) + "\n")
    Path("twice.yaml").write_text("match:\n  k: 3\n  k: 4\n")
    Path("pickle.pkl").write_bytes(pickle.dumps({"w": Path("x")}))  # a pickled object, not tensors
    Path("bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    torch.save({"0.weight": torch.zeros(3)}, "other.pth")
    Path("empty").mkdir()
    res = runner.invoke(cli, ["--set", f"store.path={tmp_path / 'store'}", *args])
    assert res.exit_code == 2, res.output
    assert message in res.output and isinstance(res.exception, SystemExit)  # no traceback: a clean exit


def test_quantize_needs_a_folder_to_write_to(
    runner: CliRunner, photo_paths: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --out or $ID2_MODELS_DIR the int8 model has nowhere the user named: a usage error, nothing written."""
    monkeypatch.delenv("ID2_MODELS_DIR", raising=False)
    result = runner.invoke(cli, ["quantize", str(photo_paths[0])], catch_exceptions=False)
    assert result.exit_code == 2 and "--out" in result.output


def test_quantize_int8_needs_photos_and_fp32_none(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(cli, ["quantize", "--out", str(tmp_path)], catch_exceptions=False)
    assert result.exit_code == 2 and "PHOTOS" in result.output and not any(tmp_path.iterdir())


def test_a_missing_store_fails_before_the_model_loads(
    runner: CliRunner, tmp_path: Path, photo_paths: list[Path]
) -> None:
    # weights that would fail to load: the store error comes first, so the model was never touched
    res = runner.invoke(
        cli,
        [
            "--set",
            f"store.path={tmp_path / 'none'}",
            "--set",
            "embedder.name=taef2",
            "--set",
            f"embedder.weights={tmp_path / 'absent.safetensors'}",
            "query",
            str(photo_paths[0]),
        ],
    )
    assert res.exit_code == 3 and "store" in res.output.lower() and "absent.safetensors" not in res.output
    # nothing readable to embed: exit 4 at once, the weights never looked at
    res = runner.invoke(
        cli,
        [
            "--set",
            "embedder.name=taef2",
            "--set",
            f"embedder.weights={tmp_path / 'absent.safetensors'}",
            "embed",
            str(tmp_path / "missing.jpg"),
            "--out",
            str(tmp_path / "e.npz"),
        ],
    )
    assert res.exit_code == 4 and "missing.jpg: not found" in res.output and "absent.safetensors" not in res.output
    assert not (tmp_path / "e.npz").exists()


def test_documented_exit_code_table_is_the_code() -> None:
    """docs/reference/exit-codes.md lists exactly the codes cli_support defines, with the same meanings."""
    import re

    from id2_plugin import cli_support
    from id2_plugin.errors import ConfigError, MediaError, StoreError

    page = (Path(__file__).resolve().parents[1] / "docs" / "reference" / "exit-codes.md").read_text()
    table = dict(re.findall(r"^\| \*\*(\d)\*\* \| (\w[^|]*)\|", page, re.M))
    assert (
        set(map(int, table))
        == {
            cli_support.EXIT_OK,
            cli_support.EXIT_NO_MATCH,
            cli_support.EXIT_USAGE,
            cli_support.EXIT_STORE,
            cli_support.EXIT_UNREADABLE,
        }
        == {0, 1, 2, 3, 4}
    )
    assert table["1"].startswith("no match") and table["4"].startswith("some input was unreadable")
    assert [cli_support.exit_code_for(e("x")) for e in (ConfigError, StoreError, MediaError)] == [2, 3, 4]
    assert cli_support.outcome_code(unreadable=2, no_match=3) == 4 and cli_support.outcome_code(no_match=1) == 1
    assert cli_support.outcome_code() == 0


def test_disk_full_while_the_store_is_created_is_one_error_line_and_leaves_no_temp_files(
    photo_paths: list[Path], tmp_path: Path
) -> None:
    import resource
    import signal

    def small_disk() -> None:  # files may not grow past 8 KB: writes fail like on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))

    exe = Path(sys.executable).with_name("id2-plugin")
    store = tmp_path / "store"
    res = subprocess.run(
        [str(exe), "--set", f"store.path={store}", "index", "add", str(photo_paths[3])],
        capture_output=True,
        text=True,
        preexec_fn=small_disk,
        timeout=300,
    )
    errors = [line for line in res.stderr.splitlines() if "error" in line.lower()]
    assert res.returncode == 3 and errors == [
        f"error: creating the store at {store} failed (is the disk full?): disk I/O error"
    ], res.stderr
    assert "Traceback" not in res.stderr and sorted(p.name for p in store.iterdir()) == ["write.lock"]


def test_a_file_name_with_newlines_cannot_forge_output_lines(
    runner: CliRunner, photo_paths: list[Path], tmp_path: Path
) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    forged = lib / "x.jpg\n  #1 score=1.0000 id=0 FAKE.jpg"
    shutil.copy(photo_paths[5], forged)
    shutil.copy(photo_paths[6], lib / "y.jpg")
    store = tmp_path / "store"
    assert invoke(runner, store, "index", "add", str(lib)).exit_code == 0
    res = invoke(runner, store, "query", "--k", "2", str(forged))
    lines = res.output.splitlines()
    assert res.exit_code == 0 and len(lines) == 3 and lines[2].endswith("y.jpg"), lines  # a line per answer
    assert lines[0].split(": MATCH (")[0].endswith(r"x.jpg\n  #1 score=1.0000 id=0 FAKE.jpg")
    assert lines[1].startswith("  #1 score=") and lines[1].endswith(r"x.jpg\n  #1 score=1.0000 id=0 FAKE.jpg")
