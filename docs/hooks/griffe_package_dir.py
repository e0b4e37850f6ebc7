"""Griffe extension: the subpackages that setuptools installs from other folders, where the API reference finds them.

``pyproject.toml`` maps ``id2_plugin.adapters`` to ``adapters/`` and ``id2_plugin.robustness`` to
``robustness/`` (``[tool.setuptools.package-dir]``). Griffe reads the source tree and knows nothing of that
mapping, so ``::: id2_plugin.adapters.http`` would not be found; this attaches each mapped folder to its
parent package under the name users import it by.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import griffe

ROOT = Path(__file__).resolve().parents[2]


def package_dirs() -> dict[str, str]:
    """``{"id2_plugin.adapters": "adapters", ...}``: the dotted subpackages that live in another folder."""
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    return {name: folder for name, folder in mapping.items() if "." in name}


class PackageDir(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs) -> None:
        for dotted, folder in package_dirs().items():
            parent, _, name = dotted.rpartition(".")
            if parent == pkg.path:
                sub = loader.load(folder, try_relative_path=False)
                pkg.set_member(name, sub)
