"""Retrieval metrics, pure functions of predictions: ISC-2021-style, tested on hand-computed toy cases.

Metrics follow the Image Similarity Challenge 2021 evaluation code (facebookresearch/isc2021,
``isc/metrics.py``):

* **Pessimistic tie-breaking** everywhere: among predictions with equal scores, incorrect ones are ranked
  first, so giving many references the same score can never improve a metric.
* ``micro_ap`` is ISC's "micro average precision": every query contributes its top-``k`` predictions
  (query, reference, score); all predictions are pooled, sorted by score, and the average precision is
  computed over the pooled list with the TOTAL number of positive pairs as denominator (positives never
  predicted count as misses). One global score scale is therefore rewarded, which is what a single
  decision threshold needs; queries without any positive (distractor queries) only add false predictions.
* ``mAP`` is the classic *mean* over queries of the per-query average precision (top-``k`` ranking,
  denominator = that query's number of positives). Queries without a positive have no defined AP and are
  excluded from ``mAP`` (and from ``top1``); they still count in ``micro_ap`` and ``recall_at_*``.
* ``top1``: fraction of queries with a positive whose top-ranked reference is a positive; a negative tied
  with the best positive wins the tie (pessimistic).
* ``recall_at_p90`` / ``recall_at_p999``: on the pooled predictions, the highest recall reached at a
  precision of at least 90% / 99.9%, and the score threshold achieving it (predictions with
  ``score >= threshold`` are matches). Only thresholds that can actually be set are considered (the end of
  a group of tied scores); ``threshold`` is None and recall 0.0 when the precision is never reached.

"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

#: Predictions kept per query for the pooled metrics (ISC lets each query submit a short ranked list).
DEFAULT_K = 100


@dataclass(frozen=True)
class RetrievalScores:
    """The scores every retrieval result reports (see the module docstring for definitions).

    A base class rather than a copy, so :class:`Metrics` and the robustness suite's curve points
    (``id2_plugin.robustness.CurvePoint``) cannot drift apart when a metric is added.
    """

    top1: float
    mAP: float
    micro_ap: float
    recall_at_p90: float
    threshold_at_p90: float | None
    recall_at_p999: float
    threshold_at_p999: float | None
    n_queries: int
    n_references: int


@dataclass(frozen=True)
class Metrics(RetrievalScores):
    """Retrieval metrics of one method on one evaluation set (see the module docstring for definitions)."""

    #: queries that have at least one positive (the denominator of top1 and mAP)
    n_positive_queries: int = 0
    #: positive (query, reference) pairs (the denominator of micro_ap and the recalls)
    n_positives: int = 0
    #: predictions kept per query
    k: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pessimistic_order(scores: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """Indices sorting by decreasing score; among equal scores incorrect predictions come first."""
    # np.lexsort sorts by the LAST key first: -score ascending (= score descending), then correct
    # ascending (False before True), which is ISC's argsort of (score, not correct), reversed.
    return np.lexsort((correct.astype(np.int8), -scores))


def _check_predictions(pred_scores: Any, pred_correct: Any, n_positive_total: int) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(pred_scores, dtype=np.float64).ravel()
    c = np.asarray(pred_correct, dtype=bool).ravel()
    if s.shape != c.shape:
        raise ValueError(f"pred_scores has {s.size} entries but pred_correct has {c.size}")
    if not np.isfinite(s).all():
        raise ValueError("prediction scores must be finite (no NaN or infinity)")
    if n_positive_total <= 0:
        raise ValueError("n_positive_total must be > 0: there is no positive to retrieve")
    if int(c.sum()) > n_positive_total:
        raise ValueError(f"{int(c.sum())} correct predictions but only {n_positive_total} positives in total")
    return s, c


def micro_average_precision(pred_scores: Any, pred_correct: Any, n_positive_total: int) -> float:
    """ISC-2021 micro-AP of pooled predictions.

    ``pred_scores``/``pred_correct``: one entry per (query, reference) prediction, pooled over queries.
    ``n_positive_total``: number of positive pairs, including those not among the predictions.
    AP = sum over ranks i of precision@i * (recall@i - recall@(i-1)), ranks in pessimistic order.
    """
    s, c = _check_predictions(pred_scores, pred_correct, n_positive_total)
    c = c[_pessimistic_order(s, c)]
    precision = np.cumsum(c) / np.arange(1, len(c) + 1)
    return float(precision[c].sum() / n_positive_total)


def recall_at_precision(
    pred_scores: Any, pred_correct: Any, n_positive_total: int, precision: float
) -> tuple[float, float | None]:
    """Highest recall at precision >= ``precision`` over pooled predictions, and the threshold giving it.

    Matches are predictions with ``score >= threshold``. Returns ``(0.0, None)`` when no threshold
    reaches the precision. Only the end of a group of tied scores is an operating point: a threshold
    cannot split a tie. (ISC's ``find_operating_point`` scans every position of the pessimistic order;
    the best point it finds is always a group end, so the results agree.)
    """
    if not 0.0 < precision <= 1.0:
        raise ValueError(f"precision must be in (0, 1], got {precision}")
    s, c = _check_predictions(pred_scores, pred_correct, n_positive_total)
    order = _pessimistic_order(s, c)
    s, c = s[order], c[order]
    tp = np.cumsum(c)
    prec = tp / np.arange(1, len(c) + 1)
    group_end = np.ones(len(s), dtype=bool)
    group_end[:-1] = s[:-1] != s[1:]
    ok = group_end & (prec >= precision)
    if not ok.any():
        return 0.0, None
    idx = np.flatnonzero(ok)
    best = idx[np.argmax(tp[idx])]  # first = highest threshold among equal recalls, as ISC
    return float(tp[best] / n_positive_total), float(s[best])


def top_k_predictions(scores: np.ndarray, positives: np.ndarray, k: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Per query, the ``k`` best references in pessimistic order: ``(scores Q x k, correct Q x k)``."""
    q, r = scores.shape
    kk = r if k is None else min(int(k), r)
    rows = np.repeat(np.arange(q), r)
    # Sorting by (row, -score, correct) over the flattened matrix ranks every row at once.
    flat = np.lexsort((positives.ravel().astype(np.int8), -scores.ravel(), rows)).reshape(q, r)[:, :kk]
    order = flat % r  # flat index -> column within the row
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(positives, order, axis=1)


def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``k / n`` (95% for the default ``z``); ``(0, 1)`` when n = 0."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # k = 0 / k = n: the bound is exactly 0 / 1 (rounding would put it a hair inside).
    return (0.0 if k == 0 else max(0.0, centre - half)), (1.0 if k == n else min(1.0, centre + half))


def recall_at_threshold(scores: np.ndarray, positives: np.ndarray, threshold: float) -> tuple[int, int]:
    """(queries whose top-1 is an origin scoring >= ``threshold``, queries with an origin): what a deployment
    running at that threshold reports as a correct MATCH. Ties at the top count against (pessimistic)."""
    has = positives.any(axis=1)
    best = scores.max(axis=1)
    top_is_origin = np.array([bool(positives[i][scores[i] == best[i]].all()) for i in range(len(scores))])
    return int((top_is_origin & (best >= threshold) & has).sum()), int(has.sum())


def compute_metrics(scores: np.ndarray, positives: np.ndarray, k: int | None = DEFAULT_K) -> Metrics:
    """All metrics from a ``Q x R`` similarity matrix and a ``Q x R`` boolean ground truth.

    ``positives[q, r]`` is True where reference ``r`` is an origin of query ``q``; a query may have none.
    ``k`` predictions per query enter ``micro_ap``, ``mAP`` and the recalls (None = all references).
    """
    scores = np.asarray(scores, dtype=np.float64)
    positives = np.asarray(positives, dtype=bool)
    if scores.ndim != 2 or scores.shape != positives.shape:
        raise ValueError(f"scores {scores.shape} and positives {positives.shape} must be the same Q x R shape")
    if k is not None and k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite (no NaN or infinity)")
    n_q, n_r = scores.shape
    n_pos_q = positives.sum(axis=1)
    has_pos = n_pos_q > 0
    n_positives = int(n_pos_q.sum())
    if n_positives == 0:
        raise ValueError("no query has a positive reference: retrieval metrics are undefined")

    # top1 (pessimistic): the best positive must beat every negative strictly.
    best_pos = np.where(positives, scores, -np.inf).max(axis=1)
    best_neg = np.where(positives, -np.inf, scores).max(axis=1)
    top1 = float((best_pos > best_neg)[has_pos].mean())

    top_s, top_c = top_k_predictions(scores, positives, k)
    kk = top_s.shape[1]
    prec = np.cumsum(top_c, axis=1) / np.arange(1, kk + 1)
    ap = (prec * top_c).sum(axis=1)[has_pos] / n_pos_q[has_pos]
    pooled_s, pooled_c = top_s.ravel(), top_c.ravel()
    r90, t90 = recall_at_precision(pooled_s, pooled_c, n_positives, 0.9)
    r999, t999 = recall_at_precision(pooled_s, pooled_c, n_positives, 0.999)
    return Metrics(
        top1=top1,
        mAP=float(ap.mean()),
        micro_ap=micro_average_precision(pooled_s, pooled_c, n_positives),
        recall_at_p90=r90,
        threshold_at_p90=t90,
        recall_at_p999=r999,
        threshold_at_p999=t999,
        n_queries=n_q,
        n_references=n_r,
        n_positive_queries=int(has_pos.sum()),
        n_positives=n_positives,
        k=kk,
    )


def single_origin_metrics(scores: np.ndarray, query_origin: Any, k: int | None = DEFAULT_K) -> dict[str, float]:
    """top-1, mAP and micro-AP of a ``Q x R`` score matrix where query ``i``'s only positive is ``query_origin[i]``.

    The summary that W training and its cross-validation compare recipes by.
    """
    positives = np.zeros(np.shape(scores), bool)
    positives[np.arange(len(query_origin)), np.asarray(query_origin)] = True
    m = compute_metrics(scores, positives, k=k)
    return {
        "top1": m.top1,
        "mAP": m.mAP,
        "micro_ap": m.micro_ap,
        "n_queries": m.n_queries,
        "n_references": m.n_references,
    }


def format_table(results: dict[str, Metrics]) -> str:
    """An aligned plain-text table of ``results`` (one row per method)."""

    def num(x: float | None) -> str:
        return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"

    header = ["method", "top1", "mAP", "micro_ap", "R@P90", "thr@P90", "R@P99.9", "thr@P99.9"]
    rows = [
        [
            name,
            num(m.top1),
            num(m.mAP),
            num(m.micro_ap),
            num(m.recall_at_p90),
            num(m.threshold_at_p90),
            num(m.recall_at_p999),
            num(m.threshold_at_p999),
        ]
        for name, m in results.items()
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        for r in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
