"""The documentation site: it builds strictly, and the strict build fails on what would make it wrong.

scripts/test.sh builds the real site; these tests build copies of docs/ with one fault each, so a build that
stopped checking links, repository paths or API names would be noticed.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
mkdocs_config = pytest.importorskip("mkdocs.config")
mkdocs_build = pytest.importorskip("mkdocs.commands.build")


def _hook(name: str):
    spec = importlib.util.spec_from_file_location(f"docs_hook_{name}", ROOT / "docs" / "hooks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def _build(docs: Path, site: Path) -> None:
    """Build ``docs`` with the repository's mkdocs.yml (its hooks, nav and validation), strictly."""
    cfg = mkdocs_config.load_config(str(ROOT / "mkdocs.yml"), docs_dir=str(docs), site_dir=str(site), strict=True)
    mkdocs_build.build(cfg)


@pytest.fixture()
def docs_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "docs"
    shutil.copytree(ROOT / "docs", copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def test_the_site_builds_with_the_generated_references(docs_copy: Path, tmp_path: Path) -> None:
    _build(docs_copy, tmp_path / "site")
    site = tmp_path / "site"
    cli = (site / "reference" / "cli" / "index.html").read_text()
    assert "id2-plugin index verify" in cli and "--repair" in cli  # every command's own --help
    http = (site / "reference" / "http" / "index.html").read_text()
    spec = (site / "reference" / "openapi.json").read_text()
    assert "/v1/identify/batch" in http and "Retry-After" in http and '"openapi"' in spec
    api = (site / "reference" / "python-api" / "index.html").read_text()
    assert "identify_many" in api and "ID2PhotoSignal" in api  # docstrings, adapters/ included


@pytest.mark.parametrize(
    "fault, page, text",
    [
        ("a link to a page that does not exist", "guides/auditor.md", "\nSee [the old page](../no-such-page.md).\n"),
        ("a link to a heading that does not exist", "index.md", "\nSee [store](reference/store.md#no-such-heading).\n"),
        ("a stale API name", "reference/python-api.md", "\n::: id2_plugin.no_such_module\n"),
        ("a repository path that does not exist", "results.md", "\nRun `python benchmarks/no_such_script.py`.\n"),
        (
            "a configuration key the code does not have",
            "reference/configuration.md",
            "\n| key | default | meaning |\n|---|---|---|\n| `match.no_such_key` | 1 | gone |\n",
        ),
    ],
)
def test_the_strict_build_fails_on(fault: str, page: str, text: str, docs_copy: Path, tmp_path: Path) -> None:
    with (docs_copy / page).open("a", encoding="utf-8") as f:
        f.write(text)
    with pytest.raises(SystemExit):  # mkdocs' Abort, raised once the build has collected the fault
        _build(docs_copy, tmp_path / "site")


def test_repository_paths_are_checked_in_code_and_placeholders_are_not() -> None:
    hook = _hook("repo_paths")
    text = (
        "Run `python benchmarks/scale.py --out benchmarks/results/gone.md`, see `adapters/<host>.py` and\n"
        "```bash\npython examples/missing_example.py ../shared/data/photos\n```\n"
        "and benchmarks/not_in_code.py outside code."
    )
    assert hook.missing_paths(text, ROOT) == ["benchmarks/results/gone.md", "examples/missing_example.py"]
    assert hook.missing_links("[a](docs/index.md) [b](docs/gone.md#x) [c](https://example.org/x)", ROOT) == [
        "docs/gone.md"
    ]


def test_configuration_keys_are_checked_against_the_code_and_all_listed() -> None:
    import dataclasses

    from id2_plugin.config import Config

    hook = _hook("config_keys")
    table = (
        "| `store.backend` / `path` | x |\n| `store.index_options.query_threads` / `batch_threads` | x |\n"
        "| `serve.*` | x |\n| `match.k` / `windowz` | x |\n| `matching.k` | x |\n"
    )
    assert hook.unknown_keys(table) == ["windowz", "matching.k"]
    generated = hook.keys_markdown()
    for section in dataclasses.fields(Config):
        value = getattr(Config(), section.name)
        if dataclasses.is_dataclass(value):
            for field in dataclasses.fields(value):
                assert f"| `{section.name}.{field.name}` |" in generated
    assert "| `media.max_pixels` | `int` | `64000000` | " in generated


def test_the_http_reference_lists_every_route_and_status_of_the_app() -> None:
    pytest.importorskip("fastapi")
    hook = _hook("openapi")
    spec = hook.build_spec()
    page = hook.spec_markdown(spec)
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            section = page.split(f"### `{method.upper()} {path}`\n", 1)[1].split("\n### ", 1)[0]
            assert sorted(re.findall(r"^\| (\d{3}) \|", section, re.M)) == sorted(op["responses"]), (method, path)
    for name in spec["components"]["schemas"]:
        assert f"\n### {name}\n" in page


def _layout_table() -> str:
    page = (ROOT / "docs" / "development.md").read_text(encoding="utf-8")
    return page[page.index("## Layout") : page.index("## Writing a new adapter")]


def test_the_layout_table_names_every_part_of_the_tree() -> None:
    named = set(re.findall(r"`([^`\s]+)`", _layout_table()))
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    wanted = {p.split("/")[0] + "/" for p in tracked if "/" in p and not p.startswith(".")}  # top-level folders
    for package in ("id2_plugin", "adapters", "robustness"):  # and every module and subpackage of the package
        wanted |= {
            "/".join(p.split("/")[:2]) + ("/" if p.count("/") > 1 else "")
            for p in tracked
            if p.startswith(package + "/") and not p.endswith(("__init__.py", "py.typed"))
        }
    assert not wanted - named, f"not in the layout table of docs/development.md: {sorted(wanted - named)}"
