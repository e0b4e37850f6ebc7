"""The pairs manifest: which edited image (``query``) came from which original (``origin``).

Format: JSON Lines, one object per pair::

    {"query": "edited/0001.jpg", "origin": "originals/0001.jpg", "model": "stabilityai/stable-diffusion-2-1",
     "prompt": "a watercolour painting", "strength": 0.9, "source": "diffusers"}

``query`` and ``origin`` are paths relative to the manifest's folder (absolute paths are accepted too);
``model``, ``prompt``, ``strength`` and ``source`` are optional provenance. Blank lines are ignored.
Every origin is one identity for training; an origin may have many queries, a query has exactly one origin.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

#: Keys a manifest line may carry; anything else is kept in :attr:`Pair.extra`.
KNOWN_KEYS = ("query", "origin", "model", "prompt", "strength", "source", "twins")


class ManifestError(ConfigError):
    """The pairs manifest is missing, malformed, or names files that do not exist."""


@dataclass(frozen=True)
class Pair:
    """One (edited query, original) pair; paths are absolute once loaded."""

    query: Path
    origin: Path
    model: str | None = None
    prompt: str | None = None
    strength: float | None = None
    source: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    #: 1-based line number in the manifest it was read from (0 when built in code)
    line: int = field(default=0, compare=False, hash=False)
    #: near-identical copies of the origin (the manifest's ``twins``): finding one of them is a correct answer
    twins: tuple[Path, ...] = field(default=(), compare=False, hash=False)

    def to_json(self, base: Path) -> dict[str, Any]:
        """The manifest object of this pair, with paths relative to ``base`` (the manifest's folder)."""
        obj: dict[str, Any] = {"query": _rel(self.query, base), "origin": _rel(self.origin, base)}
        for key in ("model", "prompt", "strength", "source"):
            value = getattr(self, key)
            if value is not None:
                obj[key] = value
        if self.twins:
            obj["twins"] = [_rel(t, base) for t in self.twins]
        obj.update(self.extra)
        return obj


def _rel(path: Path, base: Path) -> str:
    try:
        return Path(os.path.relpath(Path(path).resolve(), base.resolve())).as_posix()
    except ValueError:  # another drive on Windows: keep it absolute
        return Path(path).resolve().as_posix()


def _parse_line(obj: Any, where: str, base: Path, lineno: int) -> Pair:
    if not isinstance(obj, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    for key in ("query", "origin"):
        if not isinstance(obj.get(key), str) or not obj[key].strip():
            raise ManifestError(f"{where}: {key!r} must be a non-empty string path")
    for key in ("model", "prompt", "source"):
        if obj.get(key) is not None and not isinstance(obj[key], str):
            raise ManifestError(f"{where}: {key!r} must be a string")
    strength = obj.get("strength")
    if strength is not None:
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 <= strength <= 1.0:
            raise ManifestError(f"{where}: 'strength' must be a number in [0, 1], got {strength!r}")
        strength = float(strength)
    twins = obj.get("twins") or []
    if not isinstance(twins, list) or not all(isinstance(t, str) and t.strip() for t in twins):
        raise ManifestError(f"{where}: 'twins' must be a list of non-empty string paths")
    query, origin = (base / obj["query"]).resolve(), (base / obj["origin"]).resolve()
    if query == origin:
        raise ManifestError(f"{where}: query and origin are the same file {query}")
    return Pair(
        query=query,
        origin=origin,
        model=obj.get("model"),
        prompt=obj.get("prompt"),
        strength=strength,
        source=obj.get("source"),
        extra={k: v for k, v in obj.items() if k not in KNOWN_KEYS},
        line=lineno,
        twins=tuple((base / t).resolve() for t in twins),
    )


def load_pairs(path: str | os.PathLike, check_files: bool = True) -> list[Pair]:
    """Read and validate a pairs manifest.

    Raises :class:`ManifestError` naming the line for: malformed JSON, a missing or non-string
    ``query``/``origin``, a bad ``strength``, a pair listed twice, a query given two different origins,
    and (with ``check_files``) a query or origin file that does not exist. Unreadable image *contents* are
    not checked here: they are reported and skipped when the images are encoded.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"pairs manifest not found: {path}")
    base = path.resolve().parent
    pairs: list[Pair] = []
    seen_pair: dict[tuple[Path, Path], int] = {}
    origin_of: dict[Path, tuple[Path, int]] = {}
    missing: list[str] = []
    with open(path, encoding="utf-8") as f:
        for lineno, text in enumerate(f, start=1):
            if not text.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ManifestError(f"{where}: malformed JSON line ({exc.msg} at column {exc.colno})") from None
            pair = _parse_line(obj, where, base, lineno)
            key = (pair.query, pair.origin)
            if key in seen_pair:
                raise ManifestError(f"{where}: duplicate pair (same query and origin as line {seen_pair[key]})")
            seen_pair[key] = lineno
            if pair.query in origin_of and origin_of[pair.query][0] != pair.origin:
                raise ManifestError(
                    f"{where}: query {pair.query} already has origin {origin_of[pair.query][0]} "
                    f"(line {origin_of[pair.query][1]}); a query has exactly one origin"
                )
            origin_of[pair.query] = (pair.origin, lineno)
            if check_files:
                for role, p in (("query", pair.query), ("origin", pair.origin), *(("twin", t) for t in pair.twins)):
                    if not p.is_file():
                        missing.append(f"line {lineno}: {role} file not found: {p}")
            pairs.append(pair)
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise ManifestError(f"{path}: {len(missing)} missing file(s): " + "; ".join(missing[:5]) + more)
    if not pairs:
        raise ManifestError(f"pairs manifest {path} has no pairs")
    return pairs


def write_pairs(path: str | os.PathLike, pairs: Iterable[Pair]) -> Path:
    """Write ``pairs`` as a manifest at ``path`` (atomically), paths relative to the manifest's folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.resolve().parent
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for pair in pairs:
            f.write(json.dumps(pair.to_json(base), ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def manifest_digest(path: str | os.PathLike) -> str:
    """sha256 of the manifest's bytes: recorded in a trained W to say which pairs it was trained on."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def group_by_origin(pairs: Iterable[Pair]) -> dict[Path, list[Path]]:
    """Origin -> its queries, in manifest order (origins ordered by first appearance)."""
    groups: dict[Path, list[Path]] = {}
    for p in pairs:
        groups.setdefault(p.origin, []).append(p.query)
    return groups
