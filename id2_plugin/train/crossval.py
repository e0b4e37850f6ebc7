"""Grouped cross-validation on real edit pairs: folds never share a photo (or a near-copy of it).

Several origins of the real-edit sets are the same photo at another size or crop, or appear under several
editors; a fold split by file name would leak them. :func:`origin_groups` joins origins whose raw latents
are alike (cosine >= ``threshold``; on TAEF2 latents of the real-edit sets, copies of one photo score
0.98 and a re-framed copy 0.45, while unrelated photos stay below 0.33) into one group, and
:func:`grouped_folds` deals whole groups to folds, balancing the number of queries.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..metrics import single_origin_metrics


def origin_groups(origin_vectors: np.ndarray, threshold: float = 0.4) -> np.ndarray:
    """Group id per origin: connected components of the graph "cosine of raw vectors >= threshold"."""
    v = origin_vectors / np.maximum(np.linalg.norm(origin_vectors, axis=1, keepdims=True), 1e-12)
    sim = v @ v.T
    parent = np.arange(len(v))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return int(i)

    for i, j in zip(*np.nonzero(np.triu(sim >= threshold, k=1))):
        parent[find(int(i))] = find(int(j))
    roots = np.array([find(i) for i in range(len(v))])
    _, ids = np.unique(roots, return_inverse=True)
    return ids


def grouped_folds(query_groups: Sequence[int], n_folds: int = 5, seed: int = 0) -> np.ndarray:
    """Fold id per query; every query of a group lands in the same fold (largest groups dealt first)."""
    groups = np.asarray(query_groups)
    uniq, counts = np.unique(groups, return_counts=True)
    if len(uniq) < n_folds:
        raise ValueError(f"{len(uniq)} origin groups cannot fill {n_folds} folds")
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(len(uniq)), -counts))
    load = np.zeros(n_folds)
    fold_of: dict[int, int] = {}
    for g in order:
        f = int(np.argmin(load + rng.random(n_folds) * 1e-6))
        fold_of[int(uniq[g])] = f
        load[f] += counts[g]
    return np.array([fold_of[int(g)] for g in groups])


@dataclass
class CVResult:
    """Per-fold and pooled retrieval scores of one recipe."""

    name: str
    folds: list[dict[str, float]]
    #: metrics over all held-out queries at once (each scored by the model of its own fold)
    pooled: dict[str, float]
    per_family: dict[str, dict[str, float]] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)

    def spread(self, key: str) -> tuple[float, float, float]:
        vals = [f[key] for f in self.folds]
        return float(np.mean(vals)), float(np.min(vals)), float(np.max(vals))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "params": self.params,
            "pooled": self.pooled,
            "folds": self.folds,
            "fold_spread": {k: dict(zip(("mean", "min", "max"), self.spread(k))) for k in ("top1", "mAP")},
            "per_family": self.per_family,
        }


def cross_validate(
    name: str,
    fit: Callable[[np.ndarray], Callable[[np.ndarray], np.ndarray]],
    query_rows: np.ndarray,
    origin_col: np.ndarray,
    gallery_rows: np.ndarray,
    folds: np.ndarray,
    families: Sequence[str] = (),
    params: dict[str, Any] | None = None,
) -> CVResult:
    """Score a recipe: for each fold, ``fit(training query indices)`` returns ``embed(rows) -> vectors``.

    ``query_rows`` / ``gallery_rows`` index the caller's feature matrix; ``origin_col[i]`` is the gallery
    column of query ``i``'s origin. The gallery (every origin and distractor) is the same in every fold.
    """
    per_fold, sims = [], np.zeros((len(query_rows), len(gallery_rows)), np.float32)
    for f in range(int(folds.max()) + 1):
        test = np.flatnonzero(folds == f)
        embed = fit(np.flatnonzero(folds != f))
        g = embed(gallery_rows)
        sims[test] = embed(query_rows[test]) @ g.T
        per_fold.append(single_origin_metrics(sims[test], origin_col[test]))
    fams: dict[str, dict[str, float]] = {}
    if len(families):
        fam = np.asarray(families)
        for name_f in sorted(set(families)):
            sel = np.flatnonzero(fam == name_f)
            fams[name_f] = single_origin_metrics(sims[sel], origin_col[sel])
    return CVResult(name, per_fold, single_origin_metrics(sims, origin_col), fams, dict(params or {}))


__all__ = ["CVResult", "cross_validate", "grouped_folds", "origin_groups"]
