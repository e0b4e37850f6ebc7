"""MkDocs hook: the table of every configuration key, taken from the configuration dataclasses.

The hand-written table of the configuration page explains the keys users set most; this one is complete by
construction: each section of ``Config`` with each of its fields, its type, its default and the ``#:``
comment above it in ``id2_plugin/config.py``. A key added to the code appears here at the next build, and a
key of the hand-written table that the code no longer has is a warning (a failed ``--strict`` build).
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import re

log = logging.getLogger("mkdocs.hooks.config_keys")
MARKER = "<!-- generated: configuration keys -->"


def _comments(cls: type) -> dict[str, str]:
    """``{field: its #: comment}`` for the fields of ``cls`` that have one."""
    out: dict[str, str] = {}
    pending: list[str] = []
    for line in inspect.getsource(cls).splitlines():
        stripped = line.strip()
        if stripped.startswith("#:"):
            pending.append(stripped[2:].strip())
            continue
        field = re.match(r"(\w+)\s*:", stripped)
        if field and pending:
            out[field.group(1)] = " ".join(pending)
        pending = []
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _sections() -> dict[str, object]:
    """``{section name: its default dataclass instance}`` for the sections of the configuration file."""
    from id2_plugin.config import Config

    defaults = Config()
    values = {f.name: getattr(defaults, f.name) for f in dataclasses.fields(Config)}
    return {name: value for name, value in values.items() if dataclasses.is_dataclass(value)}


def unknown_keys(markdown: str) -> list[str]:
    """Keys named in the first column of ``markdown``'s tables that are no field of the configuration.

    A row may name siblings of its first key by their last part (```store.backend` / `path```); sub-options
    (``store.index_options.query_threads``) and ``serve.*`` are checked down to their section's field.
    """
    sections = _sections()
    unknown = []
    for row in re.findall(r"^\| (`[^|]*`) \|", markdown, re.M):
        keys = re.findall(r"`([^`]+)`", row)
        parent = keys[0].rpartition(".")[0]
        for key in keys:
            parts = (key if "." in key else f"{parent}.{key}").split(".")
            value = sections.get(parts[0])
            if value is None or (parts[1] != "*" and parts[1] not in {f.name for f in dataclasses.fields(value)}):
                unknown.append(key)
    return unknown


def keys_markdown() -> str:
    """One row per key: ``section.field`` | type | default | the field's comment."""
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for section, value in _sections().items():
        notes = _comments(type(value))
        for field in dataclasses.fields(value):
            default = getattr(value, field.name)
            shown = "none" if default is None else f"`{default!r}`"
            rows.append(
                f"| `{section}.{field.name}` | `{_cell(str(field.type))}` | {_cell(shown)} | "
                f"{_cell(notes.get(field.name, ''))} |"
            )
    return "\n".join(rows) + "\n"


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER not in markdown:
        return markdown
    for key in unknown_keys(markdown):
        log.warning("%s names the configuration key '%s', which the code does not have", page.file.src_uri, key)
    return markdown.replace(MARKER, keys_markdown())
