"""What a deployment decides at its threshold: pure functions of a score matrix and the ground truth.

Ranks (top-1, mAP) say whether the origin comes first; a moderator acts on the MATCH decision. For queries
with an origin (edits) the figure is the share reported as a MATCH *with the right origin first*; for
unrelated queries (no origin among the references, the ISC 2021 protocol's distractor queries) the share
reported as a MATCH at all, per query and per (query, reference) pair: false matches grow with the store,
the per-pair rate says by how much. Each rate comes with a 95% Wilson interval, false matches also with the
one-sided Clopper-Pearson upper bound that calibration guarantees.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .calibrate import clopper_pearson_upper
from .metrics import wilson_interval


@dataclass(frozen=True)
class DecisionMetrics:
    """Decisions at one threshold on edits (queries with an origin) and unrelated queries (without)."""

    threshold: float
    n_edits: int
    #: edits reported as a MATCH whose best reference is an origin (ties at the top count against)
    matched: int
    recall: float
    recall_interval: tuple[float, float]
    #: edits reported as a MATCH with a wrong reference first
    wrong_origin: int
    n_unrelated: int
    false_matches: int
    false_match_rate: float
    false_match_interval: tuple[float, float]
    #: one-sided 95% Clopper-Pearson upper bound on the false-match rate per unrelated query
    false_match_upper: float
    #: (unrelated query, reference) pairs scoring at or above the threshold, and their share
    false_pairs: int
    pair_rate: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decision_metrics(scores: np.ndarray, positives: np.ndarray, threshold: float) -> DecisionMetrics:
    """The decisions of a ``Q x R`` score matrix at ``threshold``; rows without a positive are unrelated queries."""
    scores = np.asarray(scores, np.float64)
    positives = np.asarray(positives, bool)
    if scores.shape != positives.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and positives {positives.shape} must be the same Q x R shape")
    edit = positives.any(axis=1)
    best = scores.max(axis=1) if scores.shape[1] else np.full(len(scores), -np.inf)
    at_top = scores == best[:, None]
    top_is_origin = ~(at_top & ~positives).any(axis=1)
    decided = best >= threshold
    matched = int((decided & top_is_origin & edit).sum())
    wrong = int((decided & ~top_is_origin & edit).sum())
    n_edits, n_unrelated = int(edit.sum()), int((~edit).sum())
    false = int((decided & ~edit).sum())
    false_pairs = int((scores[~edit] >= threshold).sum())
    n_pairs = n_unrelated * scores.shape[1]
    return DecisionMetrics(
        threshold=float(threshold),
        n_edits=n_edits,
        matched=matched,
        recall=matched / n_edits if n_edits else float("nan"),
        recall_interval=wilson_interval(matched, n_edits),
        wrong_origin=wrong,
        n_unrelated=n_unrelated,
        false_matches=false,
        false_match_rate=false / n_unrelated if n_unrelated else float("nan"),
        false_match_interval=wilson_interval(false, n_unrelated),
        false_match_upper=clopper_pearson_upper(false, n_unrelated) if n_unrelated else 1.0,
        false_pairs=false_pairs,
        pair_rate=false_pairs / n_pairs if n_pairs else float("nan"),
    )


def format_decisions(name: str, m: DecisionMetrics) -> str:
    """One line: MATCH with the right origin, wrong origins, false matches of unrelated queries."""
    lo, hi = m.recall_interval
    line = (
        f"{name}: threshold {m.threshold:.4f}: MATCH with the right origin {m.matched}/{m.n_edits} = "
        f"{m.recall:.3f} [{lo:.3f}, {hi:.3f}], wrong origin {m.wrong_origin}"
    )
    if m.n_unrelated:
        flo, fhi = m.false_match_interval
        line += (
            f"; unrelated queries matched {m.false_matches}/{m.n_unrelated} = {m.false_match_rate:.4f} "
            f"[{flo:.4f}, {fhi:.4f}] (95% upper bound {m.false_match_upper:.4f}), per pair {m.pair_rate:.2e}"
        )
    return line


__all__ = ["DecisionMetrics", "decision_metrics", "format_decisions"]
