"""Per-query records of an evaluation or a calibration: what an auditor checks query by query.

For each query and method: its origin (the best-scoring one when it has several), the origin's rank among
all references (pessimistic: a wrong reference tied with the origin ranks above it), the origin's score,
and the best *wrong* reference with its score. For the Hamming-distance hashes (PDQ, pHash) both scores
are also given in the hash's native unit, bits of Hamming distance, which is what HMA / ThreatExchange
thresholds are written in. Records hold file paths and numbers only, never pixels.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: The columns of every record, in CSV order.
FIELDS = (
    "kind",
    "query",
    "method",
    "origin",
    "rank",
    "score",
    "best_wrong",
    "best_wrong_score",
    "distance_bits",
    "best_wrong_distance_bits",
)


def distance_bits(similarity: float, n_bits: int) -> int:
    """The Hamming distance behind a ``1 - distance / n_bits`` similarity."""
    return int(round((1.0 - float(similarity)) * n_bits))


def max_distance_bits(threshold: float, n_bits: int) -> int:
    """The largest Hamming distance that still matches at similarity ``threshold`` (``score >= threshold``)."""
    return int(math.floor((1.0 - float(threshold)) * n_bits + 1e-6))


def method_bits(method: Any) -> int | None:
    """A Hamming-hash method's bit count (``n_bits``), None for a cosine method."""
    n = getattr(method, "n_bits", None)
    return int(n) if n else None


def _bits(score: float | None, n_bits: int | None) -> int | None:
    return None if score is None or n_bits is None else distance_bits(score, n_bits)


def query_records(
    name: str,
    scores: np.ndarray,
    positives: np.ndarray,
    query_paths: Sequence[str | os.PathLike],
    reference_paths: Sequence[str | os.PathLike],
    n_bits: int | None = None,
) -> list[dict[str, Any]]:
    """One record per query for one method, from its ``Q x R`` scores and the ``Q x R`` ground truth."""
    scores = np.asarray(scores, dtype=np.float64)
    positives = np.asarray(positives, dtype=bool)
    with_origin = np.where(positives, scores, -np.inf)
    wrong = np.where(positives, -np.inf, scores)
    out = []
    for i, query in enumerate(query_paths):
        has_origin, has_wrong = bool(positives[i].any()), bool((~positives[i]).any())
        o, w = int(with_origin[i].argmax()), int(wrong[i].argmax())
        origin_score = float(with_origin[i, o]) if has_origin else None
        wrong_score = float(wrong[i, w]) if has_wrong else None
        rank = 1 + int((wrong[i] >= origin_score).sum()) if origin_score is not None else None
        out.append(
            {
                "kind": "positive" if has_origin else "negative",
                "query": str(query),
                "method": name,
                "origin": str(reference_paths[o]) if has_origin else None,
                "rank": rank,
                "score": origin_score,
                "best_wrong": str(reference_paths[w]) if has_wrong else None,
                "best_wrong_score": wrong_score,
                "distance_bits": _bits(origin_score, n_bits),
                "best_wrong_distance_bits": _bits(wrong_score, n_bits),
            }
        )
    return out


def negative_records(
    name: str,
    query_paths: Sequence[str | os.PathLike],
    best: Sequence[str | None],
    best_scores: Sequence[float],
    n_bits: int | None = None,
) -> list[dict[str, Any]]:
    """Records of queries with no origin: the reference each scored best against (a false match when at or
    above the threshold)."""
    return [
        {
            "kind": "negative",
            "query": str(q),
            "method": name,
            "origin": None,
            "rank": None,
            "score": None,
            "best_wrong": b,
            "best_wrong_score": float(s),
            "distance_bits": None,
            "best_wrong_distance_bits": _bits(float(s), n_bits),
        }
        for q, b, s in zip(query_paths, best, best_scores)
    ]


def write_records(path: str | os.PathLike, records: Sequence[dict[str, Any]]) -> Path:
    """Write ``records`` to ``path``: CSV when it ends in ``.csv``, else JSON Lines (one record a line)."""
    out = Path(path)
    with open(out, "w", encoding="utf-8", newline="") as fh:
        if out.suffix.lower() == ".csv":
            writer = csv.DictWriter(fh, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows({k: ("" if r.get(k) is None else r.get(k)) for k in FIELDS} for r in records)
        else:
            fh.writelines(json.dumps({k: r.get(k) for k in FIELDS}) + "\n" for r in records)
    return out


__all__ = [
    "FIELDS",
    "distance_bits",
    "max_distance_bits",
    "method_bits",
    "negative_records",
    "query_records",
    "write_records",
]
