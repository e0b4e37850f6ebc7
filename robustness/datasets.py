"""The data sets a robustness run attacks: queries, references (origins, then distractors), the ground truth.

Two cases: :func:`photos_set` (each photo is its own query: pure copy detection) and :func:`pairs_set`
(edited queries from a pairs manifest, the edits being what is attacked). Distractors never repeat the
bytes of a query, an origin or an earlier distractor, and every input's content enters the set's digest.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from id2_plugin.errors import ConfigError
from id2_plugin.eval_sets import load_pairs_for_eval
from id2_plugin.media import iter_image_files, sha256_file, sha256_file_or_none


@dataclass
class RobustnessSet:
    """Queries (files to attack), references (origins first, then distractors) and the ground truth."""

    query_paths: list[Path]
    reference_paths: list[Path]
    #: ``Q x R`` bool: ``positives[q, r]`` where reference ``r`` is an origin of query ``q``
    positives: np.ndarray
    #: ``photos`` (the unedited photo is the query: pure copy detection) or ``pairs`` (edited queries)
    kind: str
    #: sha256 over the manifest (pairs) and every input file's content, in order
    manifest_digest: str
    #: number of references that are distractors (no query points to them)
    n_distractors: int = 0
    skipped: list[str] = field(default_factory=list)


def _inputs_digest(paths: Sequence[Path], extra: bytes = b"") -> str:
    h = hashlib.sha256(extra)
    for p in paths:
        h.update(p.name.encode() + b"\0" + sha256_file(p).encode() + b"\n")
    return h.hexdigest()


def _distractor_paths(distractors: Sequence[str | os.PathLike], exclude: set[str], limit: int | None) -> list[Path]:
    """Distractor files, skipping any whose bytes equal a query/origin or an earlier distractor."""
    out: list[Path] = []
    seen = set(exclude)
    for p in iter_image_files(list(distractors)):
        if limit is not None and len(out) >= limit:
            break
        digest = sha256_file_or_none(p)
        if digest is None or digest in seen:
            continue
        seen.add(digest)
        out.append(p)
    return out


def photos_set(
    photos: Sequence[str | os.PathLike],
    distractors: Sequence[str | os.PathLike] = (),
    *,
    limit: int | None = None,
    max_distractors: int | None = None,
) -> RobustnessSet:
    """Image-copy case: each of the first ``limit`` photos is both a reference and (attacked) a query.

    Distractors can be the same folder: the query photos (same bytes) are skipped there.
    """
    files = iter_image_files(list(photos))
    if limit is not None:
        files = files[:limit]
    if not files:
        raise ConfigError(f"no image files found in {', '.join(map(str, photos))}")
    # Byte-identical photos would be each other's "wrong" match: keep the first of each.
    unique: dict[str, Path] = {}
    for p in files:
        unique.setdefault(sha256_file(p), p)
    files = list(unique.values())
    dis = _distractor_paths(distractors, set(unique), max_distractors)
    refs = [*files, *dis]
    pos = np.zeros((len(files), len(refs)), dtype=bool)
    pos[np.arange(len(files)), np.arange(len(files))] = True
    return RobustnessSet(files, refs, pos, "photos", _inputs_digest(refs), n_distractors=len(dis))


def pairs_set(
    manifest: str | os.PathLike,
    distractors: Sequence[str | os.PathLike] = (),
    *,
    limit: int | None = None,
    max_distractors: int | None = None,
) -> RobustnessSet:
    """Edited queries from a pairs manifest (``{"query", "origin"}`` lines); the edits are what is attacked."""
    queries, origins, pos = load_pairs_for_eval(manifest, ())
    if limit is not None:
        queries, pos = queries[:limit], pos[:limit]
        used = pos.any(axis=0)
        origins, pos = [o for o, u in zip(origins, used) if u], pos[:, used]
    known = {sha256_file(p) for p in [*queries, *origins]}
    dis = _distractor_paths(distractors, known, max_distractors)
    refs = [*origins, *dis]
    full = np.zeros((len(queries), len(refs)), dtype=bool)
    full[:, : len(origins)] = pos
    digest = _inputs_digest([*queries, *refs], extra=Path(manifest).read_bytes())
    return RobustnessSet(list(queries), refs, full, "pairs", digest, n_distractors=len(dis))
