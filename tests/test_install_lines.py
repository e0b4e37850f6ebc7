"""The install table of docs/install.md, as scripts/check_install_lines.py reads it (CI then runs every row)."""

from __future__ import annotations

import importlib.util
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("check_install_lines", ROOT / "scripts" / "check_install_lines.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_every_row_names_real_extras_and_something_to_check() -> None:
    script = _script()
    rows = script.parse_table(script.INSTALL_PAGE.read_text(encoding="utf-8"))
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    assert rows[0].extra == "core" and [r.extra for r in rows[1:]] == [
        "threatexchange",
        "perception",
        "http",
        "qdrant",
        "ray",
        "train",
        "gpu",
    ]
    for row in rows:
        assert row.installs and all(words[:2] == ("pip", "install") for words in row.installs), row
        named = {x for words in row.installs for w in words if w.startswith(".[") for x in w[2:-1].split(",")}
        assert named and named <= extras, (row.extra, named - extras)
        assert row.imports or row.extra == "gpu", row  # only the GPU row is documented as not checked
    perception = rows[2]
    assert ("pip", "install", "--no-deps", "albumentations==2.0.8", "albucore==0.0.24") in perception.installs
    assert ("python", "examples/perception_benchmark.py", "--photos", "4") in perception.runs
    assert "fastapi_offline" in rows[3].imports
