"""Fitting a decision model and its operating point on real edits and unrelated queries.

Pure functions on similarity matrices, in the shape the identify path sees: each query (an edit, or an
unrelated photo with no origin among the references) keeps the store's top candidates of each ranking (the
fused cosine, or one signal's alone; with windows, also what its windows find); every (query, candidate) pair
is a training row, positive when the candidate is an origin. Grouped cross-validation (folds never split an
origin photo, nor a source of unrelated photos) scores each query with a model fitted on the other folds; the
operating point is chosen on those held-out scores, so the threshold is not fitted on the scores it is judged
by.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .calibrate import calibrate_threshold, clopper_pearson_upper
from .decision import (
    CANDIDATES,
    DEFAULT_RANKINGS,
    FUSED,
    WINDOW_SIGNAL,
    DecisionModel,
    Evidence,
    OperatingPoint,
    candidate_background,
    feature_matrix,
    fit_logistic,
    ranking_scores,
    sigmoid,
    top_candidates,
    window_rankings,
)

#: share of unrelated queries the window floor lets take the second look (``fit-decision --window-budget``):
#: 0.3 kept every held-out decision of 10 fold assignments but one -dev edit's in one of them (docs/results.md)
WINDOW_BUDGET = 0.3


@dataclass(frozen=True)
class CandidateSet:
    """Every (query, candidate) row: its evidence, whether the candidate is an origin, which query it is."""

    query: np.ndarray
    reference: np.ndarray
    signals: Mapping[str, np.ndarray]
    window: np.ndarray | None
    correct: np.ndarray
    #: per row, each signal's background of the row's query (see :class:`~id2_plugin.decision.Evidence`)
    background: Mapping[str, np.ndarray]

    def evidence(self, rows: np.ndarray | slice = slice(None)) -> Evidence:
        window = None if self.window is None else self.window[rows]
        return Evidence(
            {n: s[rows] for n, s in self.signals.items()}, window, {n: b[rows] for n, b in self.background.items()}
        )


def candidate_set(
    sims: Mapping[str, np.ndarray],
    weights: Mapping[str, float],
    positives: np.ndarray,
    window: np.ndarray | None = None,
    rankings: Sequence[tuple[str, int]] = DEFAULT_RANKINGS,
) -> CandidateSet:
    """Each query's candidates as the store gives them: the top ``n`` references of every ``(ranking, n)``
    (:func:`ranking_scores`), and with ``window`` (the best window cosine of the window signal, ``Q x R``, NaN
    where not searched) also the top ``n`` of the rankings the windows can change (the fused cosine and the
    window signal's) with the windows' evidence. The first ranking's top ``n`` set the background. Each
    query's origins are always rows, so every edit teaches the positive class."""
    names = list(weights)
    changed_by_windows = dict(window_rankings(rankings)) if window is not None else {}
    ranked = []
    for ranking, n in rankings:
        scores = ranking_scores(sims, weights, ranking)
        ranked.append(top_candidates(scores, n))
        if ranking in changed_by_windows:
            share = weights[WINDOW_SIGNAL] if ranking == FUSED else 1.0
            lifted = np.fmax(sims[WINDOW_SIGNAL], np.nan_to_num(window, nan=-1.0)) - sims[WINDOW_SIGNAL]
            ranked.append(top_candidates(scores + share * lifted, n))
    q_rows, r_rows = [], []
    for qi in range(len(positives)):
        refs = dict.fromkeys(
            [*np.concatenate([r[qi] for r in ranked]).tolist(), *np.flatnonzero(positives[qi]).tolist()]
        )
        q_rows += [qi] * len(refs)
        r_rows += list(refs)
    q, r = np.array(q_rows, dtype=np.int64), np.array(r_rows, dtype=np.int64)
    background = {name: b[q] for name, b in candidate_background({n: sims[n] for n in names}, ranked[0]).items()}
    return CandidateSet(
        q,
        r,
        {name: sims[name][q, r] for name in names},
        None if window is None else window[q, r],
        positives[q, r],
        background,
    )


def balanced_weights(y: np.ndarray) -> np.ndarray:
    """Sample weights giving each class half the total: one positive per edit against ~20 negative rows."""
    n_pos = max(int(y.sum()), 1)
    n_neg = max(int((~y).sum()), 1)
    return np.where(y, 0.5 / n_pos, 0.5 / n_neg) * len(y)


def fit_rows(cands: CandidateSet, rows: np.ndarray, features: Sequence[str], l2: float) -> tuple[np.ndarray, float]:
    """A logistic model on the given rows."""
    y = cands.correct[rows]
    x = feature_matrix(cands.evidence(rows), features)
    return fit_logistic(x, y, l2=l2, weights=balanced_weights(y))


@dataclass(frozen=True)
class QueryDecisions:
    """Per query: the best candidate's score, that candidate, and whether it is an origin."""

    score: np.ndarray
    reference: np.ndarray
    correct: np.ndarray


def best_per_query(cands: CandidateSet, scores: np.ndarray, n_queries: int) -> QueryDecisions:
    """Each query's highest-scoring candidate (ties: the first row)."""
    order = np.lexsort((np.arange(len(scores)), -scores, cands.query))
    first = np.ones(len(order), bool)
    first[1:] = cands.query[order][1:] != cands.query[order][:-1]
    top = order[first]
    out_s = np.full(n_queries, -np.inf)
    out_r = np.full(n_queries, -1, np.int64)
    out_c = np.zeros(n_queries, bool)
    out_s[cands.query[top]] = scores[top]
    out_r[cands.query[top]] = cands.reference[top]
    out_c[cands.query[top]] = cands.correct[top]
    return QueryDecisions(out_s, out_r, out_c)


def cross_validated_scores(
    cands: CandidateSet, features: Sequence[str], folds: np.ndarray, *, l2: float = 1e-3
) -> tuple[np.ndarray, np.ndarray]:
    """Every row scored by a model fitted on the other folds (``folds``: one fold id per query), with the
    windows' evidence and, by the same fold models, without it (what ``match.windows: auto`` sees first)."""
    with_windows = np.zeros(len(cands.query))
    whole = np.zeros(len(cands.query))
    no_window = dataclasses.replace(cands, window=None)
    row_fold = folds[cands.query]
    for f in np.unique(folds):
        held = np.flatnonzero(row_fold == f)
        coef, b = fit_rows(cands, np.flatnonzero(row_fold != f), features, l2)
        with_windows[held] = sigmoid(feature_matrix(cands.evidence(held), features) @ coef + b)
        whole[held] = sigmoid(feature_matrix(no_window.evidence(held), features) @ coef + b)
    return with_windows, whole


@dataclass
class DecisionFit:
    """A fitted model, its operating point, and what grouped cross-validation says of both."""

    model: DecisionModel
    cross_validated: dict[str, Any] = field(default_factory=dict)


def window_floor(
    whole: np.ndarray,
    with_windows: np.ndarray,
    threshold: float,
    margin: float = 0.5,
    unrelated: np.ndarray | None = None,
    budget: float | None = None,
) -> float:
    """The whole-image score below which the windows never lifted a query to ``threshold``, lowered by
    ``margin`` of itself so that queries a little lower still get the second look; -inf when the windows
    lifted none (nothing to learn from: look at every query).

    With ``unrelated`` (unrelated queries' whole-image scores) and ``budget``, the floor is raised where needed
    so that at most ``budget`` of the unrelated queries below the threshold take the second look: most
    production queries are unrelated, and one edit lifted from a low score must not send all of them through
    nine more forward passes. The cost bound wins over the margin; edits lifted from below it are lost, and
    the decisions reported at this floor say so."""
    lifted = (whole < threshold) & (with_windows >= threshold)
    floor = float(whole[lifted].min() * (1.0 - margin)) if lifted.any() else float("-inf")
    if unrelated is not None and budget is not None:
        below = np.asarray(unrelated)[np.asarray(unrelated) < threshold]
        if len(below):
            floor = max(floor, float(np.quantile(below, 1.0 - budget)))
    return floor


def route_floor(values: np.ndarray, negative: np.ndarray) -> float:
    """Just above the highest of the route feature's ``values`` (one per candidate row) on the rows of
    unrelated queries (``negative``), so that the route adds no false match where the operating point was
    calibrated; inf without negatives."""
    return float(np.max(values[negative])) + 1e-6 if negative.any() else float("inf")


def operating_point(
    neg_best: np.ndarray,
    pos: QueryDecisions,
    *,
    target_fpr: float,
    confidence: float,
    n_references: int,
    cosine_threshold: float,
    floor: float | None = None,
) -> OperatingPoint:
    """The threshold with the one-sided Clopper-Pearson bound on the false-match rate per unrelated query
    at most ``target_fpr``, and what it achieves on the edits (MATCH with the right origin)."""
    cal = calibrate_threshold(pos.score[pos.correct], neg_best, target_fpr=target_fpr, confidence=confidence)
    n_neg = len(neg_best)
    false = int((neg_best >= cal.threshold).sum())
    pairs = n_neg * max(n_references, 1)
    return OperatingPoint(
        threshold=float(cal.threshold),
        target_fpr=target_fpr,
        confidence=confidence,
        n_negatives=n_neg,
        false_matches=false,
        fpr_upper_bound=float(clopper_pearson_upper(false, n_neg, confidence)),
        n_references=n_references,
        pair_fpr_upper_bound=float(clopper_pearson_upper(false, pairs, confidence)),
        recall=float((pos.correct & (pos.score >= cal.threshold)).mean()),
        window_floor=float("-inf") if floor is None else floor,
        cosine_threshold=float(cosine_threshold),
    )


__all__ = [
    "CANDIDATES",
    "WINDOW_BUDGET",
    "CandidateSet",
    "DecisionFit",
    "QueryDecisions",
    "balanced_weights",
    "best_per_query",
    "candidate_set",
    "cross_validated_scores",
    "fit_rows",
    "operating_point",
    "route_floor",
    "window_floor",
]
