"""Plugin system: built-ins register through the hooks; external plugins load from entry points."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import id2_plugin
from id2_plugin import plugins


def test_builtins_register_through_hooks() -> None:
    pm = plugins.get_plugin_manager()
    for name in plugins.DEFAULT_PLUGINS:
        assert pm.has_plugin(name), name
    assert {"taef2", "sd-vae"} <= set(plugins.embedder_factories())
    assert "faiss" in plugins.store_factories()
    # id2_identify_origin is firstresult: one answer wins
    assert pm.hook.id2_identify_origin.spec.opts["firstresult"] is True


def test_import_is_light() -> None:
    heavy = "('torch', 'faiss', 'cv2', 'av', 'diffusers')"
    code = f"import sys, id2_plugin; print(json.dumps([m for m in {heavy} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", "import json;" + code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
    assert "hookimpl" in id2_plugin.__all__ and id2_plugin.__version__


@pytest.fixture()
def external_plugin(tmp_path: Path) -> Path:
    """A real installed distribution (dist-info + entry point) providing an embedder and a command."""
    (tmp_path / "acme_id2.py").write_text(
        textwrap.dedent("""
        import click, numpy as np
        import id2_plugin

        class ConstEncoder(id2_plugin.LatentEncoder):
            name = "acme-const"
            weights_digest = "0" * 64
            latent_shape = (1, 2, 2)
            def _encode_batch(self, x):
                return x[:, :1, :2, :2]

        def const_encoder(spec):
            if spec.precision == "int8":
                raise id2_plugin.ConfigError("acme-const has no int8 model; use embedder.precision fp32")
            return ConstEncoder(input_size=spec.input_size, batch_size=spec.batch_size, device=spec.device,
                                dtype=spec.dtype, resize_policy=spec.resize_policy, limits=spec.limits)

        @id2_plugin.hookimpl
        def id2_register_embedders(register):
            register("acme-const", const_encoder)

        @click.command("acme-hello")
        def hello():
            click.echo("hello from acme")

        @id2_plugin.hookimpl
        def id2_register_commands(cli):
            cli.add_command(hello)
    """)
    )
    dist = tmp_path / "acme_id2-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-id2\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[id2_plugin]\nacme = acme_id2\n")
    return tmp_path


def _run(code: str, path: Path, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(path), **env}
    for k in ("ID2_LOAD_PLUGINS", "ID2_DISABLE_PLUGINS"):
        if k not in env:
            full_env.pop(k, None)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env)


def test_entry_point_discovery(external_plugin: Path) -> None:
    code = "from id2_plugin import plugins; print(sorted(plugins.embedder_factories()))"
    assert "acme-const" in _run(code, external_plugin).stdout
    assert "acme-const" not in _run(code, external_plugin, ID2_DISABLE_PLUGINS="acme").stdout
    assert "acme-const" not in _run(code, external_plugin, ID2_LOAD_PLUGINS="").stdout
    assert "acme-const" in _run(code, external_plugin, ID2_LOAD_PLUGINS="acme").stdout
    # disabling a built-in by its short module name
    out = _run(
        "from id2_plugin import plugins; print(sorted(plugins.store_factories()))",
        external_plugin,
        ID2_DISABLE_PLUGINS="builtin_stores",
    ).stdout
    assert "faiss" not in out


def test_external_embedder_and_command_work(external_plugin: Path) -> None:
    code = textwrap.dedent("""
        import numpy as np
        from id2_plugin.config import EmbedderConfig
        from id2_plugin.assembly import build_embedder
        e = build_embedder(EmbedderConfig(name="acme-const", projection="none", allow_raw_latent=True, device="cpu"))
        v = e.embed([np.zeros((8, 8, 3), np.uint8)])
        print(e.dim, v.shape)
    """)
    res = _run(code, external_plugin)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["4", "(1,", "4)"]
    int8 = code.replace('device="cpu"', 'device="cpu", precision="int8"')
    refused = _run(int8 + "\n", external_plugin)
    assert "ConfigError: acme-const has no int8 model" in refused.stderr  # the factory's own message
    cli = _run("from id2_plugin.cli import main; main(['acme-hello'])", external_plugin)
    assert "hello from acme" in cli.stdout
