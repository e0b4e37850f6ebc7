"""Retrieval metrics on hand-computed toy cases, cross-checked against a transcription of ISC-2021's code."""

from __future__ import annotations

import json

import numpy as np
import pytest

from id2_plugin.metrics import (
    compute_metrics,
    micro_average_precision,
    recall_at_precision,
    recall_at_threshold,
    top_k_predictions,
    wilson_interval,
)

# ---------------------------------------------------------------------------------------------------
# pooled metrics on a hand-computed prediction list
# ---------------------------------------------------------------------------------------------------
# Predictions (score, correct), 4 positives in total (one positive was never predicted):
#   (0.9, T) (0.8, T) (0.8, F) (0.5, T) (0.3, F)
# Pessimistic order puts the incorrect 0.8 before the correct 0.8:
#   rank:       1      2      3      4      5
#   correct:    T      F      T      T      F
#   precision:  1/1    1/2    2/3    3/4    3/5
#   recall:     1/4    1/4    2/4    3/4    3/4
# micro-AP = (1 + 2/3 + 3/4) / 4 = 0.6041667   (an optimistic tie order would give (1 + 1 + 3/4)/4 = 0.6875)
TOY_SCORES = np.array([0.9, 0.8, 0.8, 0.5, 0.3])
TOY_CORRECT = np.array([True, True, False, True, False])


def test_micro_ap_hand_computed_with_pessimistic_ties() -> None:
    assert micro_average_precision(TOY_SCORES, TOY_CORRECT, 4) == pytest.approx((1 + 2 / 3 + 3 / 4) / 4)
    # Input order must not matter (the function sorts).
    perm = [4, 2, 0, 3, 1]
    assert micro_average_precision(TOY_SCORES[perm], TOY_CORRECT[perm], 4) == pytest.approx(0.6041667, abs=1e-7)
    # Without the tie (0.8 -> 0.79 for the incorrect one) the correct prediction ranks 2nd: (1 + 1 + 3/4)/4.
    untied = np.array([0.9, 0.8, 0.79, 0.5, 0.3])
    assert micro_average_precision(untied, TOY_CORRECT, 4) == pytest.approx(0.6875)


def test_recall_at_precision_hand_computed() -> None:
    # Operating points exist only at the end of a tie group: after 0.9 (P=1, R=1/4), after both 0.8s
    # (P=2/3, R=2/4), after 0.5 (P=3/4, R=3/4), after 0.3 (P=3/5, R=3/4).
    assert recall_at_precision(TOY_SCORES, TOY_CORRECT, 4, 0.9) == (pytest.approx(0.25), 0.9)
    assert recall_at_precision(TOY_SCORES, TOY_CORRECT, 4, 0.7) == (pytest.approx(0.75), 0.5)
    assert recall_at_precision(TOY_SCORES, TOY_CORRECT, 4, 0.6) == (pytest.approx(0.75), 0.5)  # higher threshold wins
    # Best prediction is wrong -> precision 0.999 is never reached.
    assert recall_at_precision([0.9, 0.8], [False, True], 1, 0.999) == (0.0, None)


def test_recall_at_precision_cannot_split_a_tie() -> None:
    # (0.8, T) and (0.8, F) tied, 1 positive: any threshold <= 0.8 accepts both -> precision 1/2.
    # A per-position scan with the correct one first would wrongly claim recall 1 at precision 1.
    assert recall_at_precision([0.8, 0.8], [True, False], 1, 0.9) == (0.0, None)
    assert recall_at_precision([0.8, 0.8], [True, False], 1, 0.5) == (1.0, 0.8)


def test_pooled_metric_input_validation() -> None:
    with pytest.raises(ValueError, match="n_positive_total"):
        micro_average_precision([0.5], [False], 0)
    with pytest.raises(ValueError, match="correct predictions"):
        micro_average_precision([0.5, 0.4], [True, True], 1)
    with pytest.raises(ValueError, match="finite"):
        micro_average_precision([np.nan], [True], 1)


# ---------------------------------------------------------------------------------------------------
# compute_metrics on a hand-computed 3 x 4 matrix
# ---------------------------------------------------------------------------------------------------
# q0: scores [0.9, 0.5, 0.2, 0.1], positive {r0}      -> top-1 correct, AP = 1
# q1: scores [0.7, 0.7, 0.3, 0.6], positives {r1, r3}  -> r0 (negative) ties r1 at 0.7 and goes first:
#       ranking F(0.7) T(0.7) T(0.6) F(0.3): top-1 WRONG, AP = (1/2 + 2/3) / 2 = 0.5833333
# q2: scores [0.4, 0.65, 0.1, 0.2], no positive        -> excluded from top1 and mAP, its predictions are
#       all false in the pooled metrics
# top1 = 1/2; mAP = (1 + 0.5833333) / 2 = 0.7916667
# pooled (k = 4), 3 positives: 0.9T 0.7F 0.7T 0.65F 0.6T 0.5F 0.4F 0.3F 0.2F 0.2F 0.1F 0.1F
#   precision at the correct ones: 1/1, 2/3, 3/5 -> micro-AP = (1 + 2/3 + 3/5) / 3 = 0.7555556
#   recall@P90: only the point after 0.9 has precision >= 0.9 -> recall 1/3 at threshold 0.9 (same @P99.9)
# k = 2: q0 keeps 0.9T 0.5F, q1 keeps 0.7F 0.7T (pessimistic), q2 keeps 0.65F 0.4F; r3 of q1 is lost:
#   micro-AP = (1 + 2/3) / 3 = 0.5555556; AP(q1) = (1/2) / 2 = 0.25 -> mAP = (1 + 0.25) / 2 = 0.625
SCORES = np.array([[0.9, 0.5, 0.2, 0.1], [0.7, 0.7, 0.3, 0.6], [0.4, 0.65, 0.1, 0.2]])
POSITIVES = np.array([[1, 0, 0, 0], [0, 1, 0, 1], [0, 0, 0, 0]], dtype=bool)


def test_compute_metrics_hand_computed() -> None:
    m = compute_metrics(SCORES, POSITIVES, k=None)
    assert m.top1 == pytest.approx(0.5)
    assert m.mAP == pytest.approx(0.7916667, abs=1e-7)
    assert m.micro_ap == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    assert m.recall_at_p90 == pytest.approx(1 / 3) and m.threshold_at_p90 == 0.9
    assert m.recall_at_p999 == pytest.approx(1 / 3) and m.threshold_at_p999 == 0.9
    assert (m.n_queries, m.n_references, m.n_positive_queries, m.n_positives, m.k) == (3, 4, 2, 3, 4)
    d = m.to_dict()
    assert set(d) >= {
        "top1",
        "mAP",
        "micro_ap",
        "recall_at_p90",
        "threshold_at_p90",
        "recall_at_p999",
        "threshold_at_p999",
        "n_queries",
        "n_references",
    }
    json.dumps(d)  # serialisable as is


def test_compute_metrics_top_k_cut() -> None:
    m = compute_metrics(SCORES, POSITIVES, k=2)
    assert m.micro_ap == pytest.approx((1 + 2 / 3) / 3)
    assert m.mAP == pytest.approx(0.625)
    assert m.top1 == pytest.approx(0.5)  # top-1 does not depend on k
    s, c = top_k_predictions(SCORES, POSITIVES, 2)
    assert s.tolist() == [[0.9, 0.5], [0.7, 0.7], [0.65, 0.4]]
    assert c.tolist() == [[True, False], [False, True], [False, False]]


def test_distractor_query_lowers_pooled_metrics_only() -> None:
    # Raising q2's false score above every true one hurts micro-AP but leaves top1 and mAP unchanged:
    # pooled order becomes 0.95F 0.9T 0.7F 0.7T 0.6T ...: micro-AP = (1/2 + 2/4 + 3/5) / 3 = 0.5333333.
    s = SCORES.copy()
    s[2, 1] = 0.95
    m = compute_metrics(s, POSITIVES, k=None)
    assert m.micro_ap == pytest.approx((0.5 + 0.5 + 0.6) / 3)
    assert (m.top1, m.mAP) == (pytest.approx(0.5), pytest.approx(0.7916667, abs=1e-7))
    assert (m.recall_at_p90, m.threshold_at_p90) == (0.0, None)


def test_compute_metrics_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="no query has a positive"):
        compute_metrics(SCORES, np.zeros_like(POSITIVES))
    with pytest.raises(ValueError, match="same Q x R shape"):
        compute_metrics(SCORES, POSITIVES[:, :3])
    with pytest.raises(ValueError, match="k must be"):
        compute_metrics(SCORES, POSITIVES, k=0)


# An independent transcription of facebookresearch/isc2021 isc/metrics.py (precision_recall,
# average_precision, find_operating_point), used to cross-check the vectorised implementation.
def _isc_reference(
    scores: np.ndarray, correct: np.ndarray, n_pos: int, req: float
) -> tuple[float, float, float | None]:
    order = sorted(range(len(scores)), key=lambda i: (scores[i], not correct[i]))[::-1]
    y = correct[order]
    s = scores[order]
    ntp = np.cumsum(y)
    precisions = ntp / (np.arange(len(y)) + 1)
    recalls = ntp / n_pos
    ap = float(((recalls - np.concatenate([[0], recalls[:-1]])) * precisions).sum())
    valid = precisions >= req
    if not valid.any():
        return ap, 0.0, None
    best = int(np.argmax(recalls[valid]))
    return ap, float(recalls[valid][best]), float(s[valid][best])


@pytest.mark.parametrize("seed", range(8))
def test_pooled_metrics_match_isc_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 200
    scores = rng.integers(0, 25, n) / 25.0  # few distinct values: many ties between right and wrong
    correct = rng.random(n) < 0.3 + 0.5 * scores  # higher scores more often right
    n_pos = int(correct.sum()) + int(rng.integers(0, 10))
    for req in (0.6, 0.8, 0.9):
        ap, r, t = _isc_reference(scores, correct, n_pos, req)
        assert micro_average_precision(scores, correct, n_pos) == pytest.approx(ap, abs=1e-12)
        assert recall_at_precision(scores, correct, n_pos, req) == (pytest.approx(r, abs=1e-12), t)


def test_wilson_interval_hand_computed() -> None:
    low, high = wilson_interval(8, 8)  # "1.000" on 8 queries means little: [0.676, 1]
    assert abs(low - 0.6756) < 1e-3 and high == 1.0
    low, high = wilson_interval(5, 10)
    assert abs(low - 0.2366) < 1e-3 and abs(high - 0.7634) < 1e-3
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_recall_at_threshold_hand_computed() -> None:
    scores = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.3], [0.45, 0.2]])
    positives = np.array([[1, 0], [1, 0], [0, 1], [1, 0]], bool)
    # q0 right and above; q1 wrong top-1; q2 a tie at the top (counts against); q3 right but below 0.5
    assert recall_at_threshold(scores, positives, 0.5) == (1, 4)
    assert recall_at_threshold(scores, positives, 0.4) == (2, 4)
