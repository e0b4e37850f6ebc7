"""Conformance checks for ThreatExchange ``SignalType`` implementations (ours or any other).

``python-threatexchange`` documents a ``signal_type_test_helper`` for extension authors, but neither its
wheel nor its sdist ships it; this check covers the same ground (examples validate and self-match, the
index finds what was added, serialisation round-trips) plus the files-based matching the CLI relies on.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._lazy import require


def _fail(msg: str) -> None:
    raise AssertionError(msg)


def check_signal_type(
    signal_type: type,
    *,
    matching_files: Sequence[tuple[str | Path, str | Path]] = (),
    non_matching_files: Sequence[tuple[str | Path, str | Path]] = (),
    invalid_signals: Sequence[str] = ("", "not a hash", "zz" * 40),
) -> None:
    """Assert that ``signal_type`` works as ThreatExchange / HMA use it.

    Checks the name (``lower_with_underscore``), content types, index class; that ``get_examples()`` is
    non-empty and every example validates (idempotently) and matches itself; that ``invalid_signals`` are
    rejected by ``validate_signal_str``; that an index built from the examples returns each example's
    entry (best match first) and still does after ``serialize`` then the subclass's ``deserialize`` or the
    base ``SignalTypeIndex.deserialize`` (what OpenMediaMatch calls); and, for file hashers,
    that each pair in ``matching_files`` matches and each pair in ``non_matching_files`` does not.
    """
    signal_base = require("threatexchange.signal_type.signal_base")
    _check_declaration(signal_type, signal_base)
    normalised = _check_examples(signal_type, signal_base, invalid_signals)
    _check_index(signal_type, normalised)
    if matching_files or non_matching_files:
        if not issubclass(signal_type, signal_base.FileHasher):
            _fail(f"{signal_type.get_name()} is not a FileHasher; it cannot hash files")
        _check_files(signal_type, matching_files, non_matching_files)


def _check_declaration(signal_type: type, signal_base: Any) -> None:
    """A SignalType subclass with a lower_with_underscore name, content types and an index class."""
    index_mod = require("threatexchange.signal_type.index")
    content_base = require("threatexchange.content_type.content_base")
    if not (isinstance(signal_type, type) and issubclass(signal_type, signal_base.SignalType)):
        _fail(f"{signal_type!r} is not a threatexchange SignalType subclass")
    name = signal_type.get_name()
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name or ""):
        _fail(f"get_name() must be lower_with_underscore, got {name!r}")
    ctypes = signal_type.get_content_types()
    if not ctypes or not all(issubclass(c, content_base.ContentType) for c in ctypes):
        _fail(f"get_content_types() must list ContentType subclasses, got {ctypes!r}")
    index_cls = signal_type.get_index_cls()
    if not issubclass(index_cls, index_mod.SignalTypeIndex):
        _fail(f"get_index_cls() must return a SignalTypeIndex subclass, got {index_cls!r}")


def _check_examples(signal_type: Any, signal_base: Any, invalid_signals: Sequence[str]) -> list[str]:
    """Examples validate idempotently and match themselves; invalid signals are refused. The normalised examples."""
    examples = signal_type.get_examples()
    if not examples:
        _fail("get_examples() is empty")
    normalised = []
    for ex in examples:
        v = signal_type.validate_signal_str(ex)
        if not isinstance(v, str) or signal_type.validate_signal_str(v) != v:
            _fail(f"validate_signal_str is not idempotent on example {ex[:40]!r}...")
        normalised.append(v)
        if issubclass(signal_type, signal_base.FileHasher):
            res = signal_type.compare_hash(v, v)
            if not res.match:
                _fail(f"example {ex[:40]!r}... does not match itself (distance {res.distance.pretty_str()})")
    for bad in invalid_signals:
        try:
            signal_type.validate_signal_str(bad)
        except Exception:
            continue
        _fail(f"validate_signal_str accepted the invalid signal {bad[:40]!r}")
    return normalised


def _check_index(signal_type: Any, normalised: list[str]) -> None:
    """The index finds every example, after a round trip through both loaders too, and keeps duplicates."""
    index_mod = require("threatexchange.signal_type.index")
    index_cls = signal_type.get_index_cls()
    entries = [(sig, {"example": i}) for i, sig in enumerate(normalised)]
    idx = index_cls.build(entries)
    _check_index_finds(idx, entries, "built index")
    buf = io.BytesIO()
    idx.serialize(buf)
    buf.seek(0)
    _check_index_finds(index_cls.deserialize(buf), entries, "deserialised index")
    # OpenMediaMatch loads every stored index through the base class, whatever its signal type.
    buf.seek(0)
    _check_index_finds(
        index_mod.SignalTypeIndex.deserialize(buf), entries, "index loaded by SignalTypeIndex.deserialize"
    )
    dup = index_cls.build(entries + [(normalised[0], {"example": "again"})])
    got = [m.metadata for m in dup.query(normalised[0])]
    if {"example": 0} not in got or {"example": "again"} not in got:
        _fail(f"an index must keep every entry added under the same signal, got {got}")


def _check_files(
    signal_type: Any,
    matching_files: Sequence[tuple[str | Path, str | Path]],
    non_matching_files: Sequence[tuple[str | Path, str | Path]],
) -> None:
    """Matching file pairs match (directly and through an index); non-matching ones do not."""
    index_cls = signal_type.get_index_cls()
    hashes: dict[Path, str] = {}

    def hash_of(path: str | Path) -> str:
        # Each file is hashed once: model-based hashers are expensive.
        p = Path(path)
        if p not in hashes:
            hashes[p] = signal_type.hash_from_file(p)
        return hashes[p]

    for a, b in matching_files:
        ha, hb = hash_of(a), hash_of(b)
        if not ha or not hb:
            _fail(f"could not hash {a} or {b}")
        res = signal_type.compare_hash(ha, hb)
        if not res.match:
            _fail(f"{a} and {b} should match (distance {res.distance.pretty_str()})")
        found = index_cls.build([(ha, "a")]).query(hb)
        if [m.metadata for m in found] != ["a"]:
            _fail(f"an index holding {a} does not return it for {b}")
    for a, b in non_matching_files:
        ha, hb = hash_of(a), hash_of(b)
        res = signal_type.compare_hash(ha, hb)
        if res.match:
            _fail(f"{a} and {b} should not match (distance {res.distance.pretty_str()})")
        if index_cls.build([(ha, "a")]).query(hb):
            _fail(f"an index holding {a} returns it for the unrelated {b}")


def _check_index_finds(idx: Any, entries: list[tuple[str, Any]], what: str) -> None:
    for sig, meta in entries:
        found = list(idx.query(sig))
        metas = [m.metadata for m in found]
        if meta not in metas:
            _fail(f"{what}: querying an added signal does not return its entry {meta} (got {metas})")
        exact = found[metas.index(meta)]
        # Several examples may lie within the threshold of each other; the exact one must rank first
        # (or tie with the first).
        if metas.index(meta) and exact.similarity_info < found[0].similarity_info:
            _fail(f"{what}: the exact signal is not the best match ({metas[0]} before {meta})")
