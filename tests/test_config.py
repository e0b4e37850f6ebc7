"""Config: YAML -> frozen dataclasses, validation naming the bad key, override precedence."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from id2_plugin.config import Config, load_config, parse_override
from id2_plugin.errors import ConfigError


def test_defaults_and_frozen() -> None:
    cfg = load_config(None)
    assert (
        cfg.embedder.name == "auto" and cfg.embedder.vae == "taef2" and cfg.match.k == 5 and cfg.store.index == "flat"
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.match.k = 3  # type: ignore[misc]


def test_yaml_and_overrides(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("match:\n  k: 3\n  threshold: 0.7\nstore:\n  path: /tmp/s\n  index_options: {nlist: 64}\n")
    cfg = load_config(f, parse_override("match.threshold=0.8"))
    assert cfg.match.k == 3 and cfg.match.threshold == 0.8 and cfg.store.index_options == {"nlist": 64}
    assert cfg.source == str(f)
    again = load_config(f)
    assert again.match.threshold == 0.7
    # round trip: what `config show` prints loads back to the same config
    f2 = tmp_path / "c2.yaml"
    f2.write_text(cfg.to_yaml())
    assert load_config(f2) == cfg


@pytest.mark.parametrize(
    "text,pattern",
    [
        ("match:\n  kk: 3\n", "match.kk"),
        ("bogus: 1\n", "'bogus'"),
        ("match:\n  k: three\n", "match.k"),
        ("match:\n  threshold: 2.0\n", "match.threshold"),
        ("embedder:\n  resize_policy: stretch\n", "embedder.resize_policy"),
        ("embedder:\n  input_size: 100\n", "embedder.input_size"),
        ("match: [1, 2]\n", "match"),
        ("- a\n- b\n", "top level"),
        ("match: {k: 1\n", "not valid YAML"),
        ("match:\n  k: true\n", "match.k"),
        ("embedder:\n  batch_size: fast\n", "embedder.batch_size"),
        ("embedder:\n  batch_size: 0\n", "embedder.batch_size"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, pattern: str) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=pattern):
        load_config(f)


def test_missing_file_and_bad_override(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("match.k")


def test_env_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "env.yaml"
    f.write_text("match: {k: 9}\n")
    monkeypatch.setenv("ID2_CONFIG", str(f))
    assert load_config().match.k == 9
    assert isinstance(load_config(), Config)


def test_batch_size_auto_caps_the_forward_pass_by_input_size() -> None:
    assert load_config(None, {"embedder": {"batch_size": "auto"}}).embedder.model_batch_size == 16
    assert load_config(None, {"embedder": {"batch_size": "auto", "input_size": 512}}).embedder.model_batch_size == 4
    assert load_config(None, {"embedder": {"batch_size": 6}}).embedder.model_batch_size == 6
