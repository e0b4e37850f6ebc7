"""MkDocs hook: every repository path the docs and the README name must exist in the checkout.

MkDocs checks links between pages; the pages (moved from the README) name the repository's files in code
(``benchmarks/results/scale.md``, ``python benchmarks/scale.py ...``) rather than linking them, because the
site has no copy of those files. A renamed script or result file would leave such a name stale without a
word, so it is a warning here, which ``mkdocs build --strict`` turns into a failed build. The README is
not a page of the site but is the entrance to it: its relative links and the paths it names are checked too.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

log = logging.getLogger("mkdocs.hooks.repo_paths")

#: The top-level folders whose files the docs name; a path is recognised by starting with one of them.
TOP = ("id2_plugin", "adapters", "robustness", "benchmarks", "examples", "scripts", "tests", "docs", ".ci")
_CODE = re.compile(r"```.*?```|`[^`\n]+`", re.S)
_TOPS = "|".join(re.escape(t) for t in TOP)
_PATH = re.compile(rf"(?<![\w./~-])((?:{_TOPS})/[\w./*<>-]*)")
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def missing_paths(markdown: str, root: Path) -> list[str]:
    """The repository paths named in ``markdown``'s code that do not exist under ``root``, in order.

    Placeholders (``adapters/<host>.py``) and globs are not paths and are passed over.
    """
    found = []
    for code in _CODE.findall(markdown):
        for path in _PATH.findall(code):
            path = path.rstrip(".")
            if not (root / path).exists() and path not in found:
                found.append(path)
    return [p for p in found if not re.search(r"[<>*]", p)]


def missing_links(markdown: str, base: Path) -> list[str]:
    """The relative link targets of ``markdown`` (a file in ``base``) that do not exist, anchors aside."""
    targets = [t.split("#")[0] for t in _LINK.findall(markdown) if "://" not in t and not t.startswith("#")]
    return [t for t in dict.fromkeys(targets) if t and not (base / t).exists()]


def _root(config) -> Path:
    return Path(config.config_file_path).resolve().parent


def on_pre_build(config) -> None:
    root = _root(config)
    readme = (root / "README.md").read_text(encoding="utf-8")
    for path in missing_paths(readme, root):
        log.warning("README.md names '%s', which does not exist in the repository", path)
    for target in missing_links(readme, root):
        log.warning("README.md links to '%s', which does not exist in the repository", target)


def on_page_markdown(markdown: str, page, config, files) -> str:
    for path in missing_paths(markdown, _root(config)):
        log.warning("%s names '%s', which does not exist in the repository", page.file.src_uri, path)
    return markdown
