"""Fitting the weights of the ``fused`` embedder from per-signal similarity matrices.

The fused cosine is ``sum_i w_i * cos_i`` (:mod:`id2_plugin.embedders.fused`), so a fit is a search over
the weight simplex. Each candidate is scored with the ISC metrics of :mod:`id2_plugin.evaluate` on
the real pairs given; the objective is ``top1 + mAP`` (micro-AP breaks ties: it rewards one global score
scale, which a single decision threshold needs). The weights are chosen on all pairs; grouped
cross-validation (choose on the other folds, score the held-out one) reports what that choice is worth on
origins it did not see, next to every single signal on the same folds.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .metrics import DEFAULT_K, compute_metrics


def weight_grid(names: Sequence[str], step: float = 0.05) -> list[dict[str, float]]:
    """Every weight vector on the simplex with the given step (each weight a multiple of ``step``)."""
    n = int(round(1.0 / step))
    out = []
    for combo in itertools.product(range(n + 1), repeat=len(names) - 1):
        if sum(combo) <= n:
            ws = [c / n for c in combo] + [(n - sum(combo)) / n]
            out.append(dict(zip(names, ws)))
    return out


def _fused(sims: dict[str, np.ndarray], weights: dict[str, float]) -> np.ndarray:
    return sum(w * sims[name] for name, w in weights.items() if w)  # type: ignore[return-value]


def _objective(sim: np.ndarray, positives: np.ndarray, k: int | None) -> tuple[float, float, dict[str, float]]:
    m = compute_metrics(sim, positives, k=k)
    return m.top1 + m.mAP, m.micro_ap, {"top1": m.top1, "mAP": m.mAP, "micro_ap": m.micro_ap}


def best_weights(
    sims: dict[str, np.ndarray], positives: np.ndarray, grid: Sequence[dict[str, float]], k: int | None = DEFAULT_K
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """The grid point maximising (top1 + mAP, then micro-AP) on the queries of ``positives``, and every
    point's scores."""
    curve = []
    best: tuple[float, float] | None = None
    chosen = grid[0]
    for weights in grid:
        main, tie, scores = _objective(_fused(sims, weights), positives, k)
        curve.append({"weights": weights, **scores})
        if best is None or (main, tie) > best:
            best, chosen = (main, tie), weights
    return dict(chosen), curve


@dataclass
class FusionReport:
    """A fit: the chosen weights, the score of every grid point, and the grouped cross-validation."""

    weights: dict[str, float]
    curve: list[dict[str, Any]]
    #: per method ("fused" = weights chosen on the other folds; each signal alone): pooled held-out scores
    cross_validated: dict[str, dict[str, float]] = field(default_factory=dict)
    #: the weights each fold chose
    fold_weights: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "weights": self.weights,
            "cross_validated": self.cross_validated,
            "fold_weights": self.fold_weights,
            "curve": self.curve,
        }


def fit_fusion(
    sims: dict[str, np.ndarray],
    positives: np.ndarray,
    *,
    folds: np.ndarray | None = None,
    step: float = 0.05,
    k: int | None = DEFAULT_K,
) -> FusionReport:
    """Choose fusion weights for the per-signal ``Q x R`` similarity matrices ``sims``.

    ``folds`` (one fold id per query, e.g. from :func:`id2_plugin.train.crossval.grouped_folds`) adds the
    held-out estimate: each fold's queries are scored with the weights chosen on the others.
    """
    names = list(sims)
    grid = weight_grid(names, step)
    weights, curve = best_weights(sims, positives, grid, k)
    report = FusionReport(weights, curve)
    if folds is None:
        return report
    fused_cv = np.zeros_like(next(iter(sims.values())), dtype=np.float32)
    for f in np.unique(folds):
        test, train = folds == f, folds != f
        w_f, _ = best_weights({n: s[train] for n, s in sims.items()}, positives[train], grid, k)
        report.fold_weights.append(w_f)
        fused_cv[test] = _fused({n: s[test] for n, s in sims.items()}, w_f)
    report.cross_validated["fused"] = _objective(fused_cv, positives, k)[2]
    for name, s in sims.items():
        report.cross_validated[name] = _objective(s, positives, k)[2]
    return report


__all__ = ["FusionReport", "best_weights", "fit_fusion", "weight_grid"]
