"""Fitting a decision model: candidate rows, best per query, the windows' floor and the operating point,
on hand-made toy matrices."""

from __future__ import annotations

import numpy as np
import pytest

from id2_plugin.decision_fit import (
    QueryDecisions,
    best_per_query,
    candidate_set,
    cross_validated_scores,
    operating_point,
    window_floor,
)
from id2_plugin.errors import ConfigError


def _toy() -> tuple[dict[str, np.ndarray], np.ndarray]:
    sims = {
        "id2": np.array([[0.9, 0.2, 0.1, 0.3], [0.1, 0.2, 0.8, 0.0], [0.2, 0.1, 0.3, 0.25]]),
        "sscd": np.array([[0.7, 0.1, 0.0, 0.2], [0.0, 0.1, 0.1, 0.6], [0.1, 0.2, 0.1, 0.15]]),
    }
    positives = np.zeros((3, 4), bool)
    positives[0, 0] = positives[1, 3] = True  # query 2 is unrelated
    return sims, positives


def test_candidates_keep_the_top_and_every_origin_with_the_whole_images_background() -> None:
    sims, positives = _toy()
    c = candidate_set(sims, {"id2": 0.5, "sscd": 0.5}, positives, rankings=(("fused", 2),))
    rows_of = {q: c.reference[c.query == q].tolist() for q in range(3)}
    assert rows_of[0] == [0, 3]  # fused 0.8, 0.25
    assert rows_of[1] == [2, 3]  # fused 0.45 and 0.3: the origin 3 is in the top 2
    assert rows_of[2] == [2, 3]  # tied at 0.2: the stable order keeps the lower index first
    assert c.correct.tolist() == [True, False, False, True, False, False]
    # background: median of the top-2 candidates' own cosines, per signal
    assert c.background["id2"][c.query == 0][0] == pytest.approx((0.9 + 0.3) / 2)
    assert c.background["sscd"][c.query == 1][0] == pytest.approx((0.1 + 0.6) / 2)
    far = candidate_set(sims, {"id2": 1.0, "sscd": 0.0}, positives, rankings=(("fused", 1),))
    assert far.reference[far.query == 1].tolist() == [2, 3]  # the origin is added even outside the top 1


def test_candidates_from_several_rankings_take_the_background_from_the_first() -> None:
    sims, positives = _toy()
    weights = {"id2": 0.5, "sscd": 0.5}
    c = candidate_set(sims, weights, positives, rankings=(("id2", 2), ("fused", 1)))
    rows_of = {q: c.reference[c.query == q].tolist() for q in range(3)}
    assert rows_of[0] == [0, 3]  # id2 0.9, 0.3; the fused best (0) is already a row
    assert rows_of[1] == [2, 1, 3]  # id2 0.8, 0.2 then the fused best 2 again: the origin 3 is added
    assert rows_of[2] == [2, 3]  # id2 0.3, 0.25; the fused best 2 (tied with 3, lower index first)
    # background: the median of the id2 ranking's top 2, each signal's own cosine
    assert c.background["id2"][c.query == 1][0] == pytest.approx((0.8 + 0.2) / 2)
    assert c.background["sscd"][c.query == 1][0] == pytest.approx((0.1 + 0.1) / 2)
    # with windows, the fused ranking also brings its best with the windows' evidence; id2's does not
    window = np.full((3, 4), np.nan)
    window[2, 1] = 0.9  # query 2's windows find reference 1
    w = candidate_set(sims, weights, positives, window, rankings=(("id2", 1), ("fused", 1)))
    assert w.reference[w.query == 2].tolist() == [2, 1]
    only_id2 = candidate_set(sims, weights, positives, window, rankings=(("id2", 1),))
    assert only_id2.reference[only_id2.query == 2].tolist() == [2]
    with pytest.raises(ConfigError, match="no signal .pdq."):
        candidate_set(sims, weights, positives, rankings=(("pdq", 1),))


def test_best_per_query_and_window_floor() -> None:
    sims, positives = _toy()
    c = candidate_set(sims, {"id2": 0.5, "sscd": 0.5}, positives, rankings=(("fused", 2),))
    best = best_per_query(c, c.signals["sscd"], 3)
    assert best.reference.tolist() == [0, 3, 3] and best.correct.tolist() == [True, True, False]
    whole = np.array([0.1, 0.4, 0.35, 0.8])
    with_windows = np.array([0.1, 0.7, 0.6, 0.8])
    # lifted over 0.5 from 0.4 and 0.35: the floor is the lowest lifted score lowered by half of itself
    assert window_floor(whole, with_windows, 0.5) == pytest.approx(0.175)
    assert window_floor(whole, whole, 0.5) == float("-inf")
    # a budget: at most a quarter of the unrelated queries below the threshold may look again
    unrelated = np.array([0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.9])  # 0.9 matched: not counted
    floor = window_floor(whole, with_windows, 0.5, unrelated=unrelated, budget=0.25)
    assert floor == pytest.approx(np.quantile(unrelated[:8], 0.75)) and (unrelated[:8] >= floor).sum() == 2
    # the margin's floor stands when it is already within the budget
    assert window_floor(whole, with_windows, 0.5, unrelated=unrelated, budget=1.0) == pytest.approx(0.175)


def test_operating_point_bounds_the_negatives() -> None:
    neg = np.linspace(0.0, 0.4, 600)
    pos = QueryDecisions(np.array([0.9, 0.8, 0.45, 0.3]), np.zeros(4, int), np.array([True, True, True, False]))
    op = operating_point(neg, pos, target_fpr=0.005, confidence=0.95, n_references=100, cosine_threshold=0.25)
    assert 0.4 < op.threshold <= 0.45 and op.false_matches == 0
    assert op.fpr_upper_bound == pytest.approx(1 - 0.05 ** (1 / 600))
    assert op.pair_fpr_upper_bound == pytest.approx(1 - 0.05 ** (1 / 60000))
    assert op.recall == pytest.approx(0.75) and op.cosine_threshold == 0.25


def test_cross_validated_scores_come_from_other_folds() -> None:
    rng = np.random.default_rng(0)
    q = 40
    sims = {"id2": rng.uniform(0, 0.3, (q, 30)), "sscd": rng.uniform(0, 0.3, (q, 30))}
    positives = np.zeros((q, 30), bool)
    for i in range(20):  # 20 edits with a clearly higher origin, 20 unrelated queries
        positives[i, i] = True
        sims["id2"][i, i] += 0.5
        sims["sscd"][i, i] += 0.4
    c = candidate_set(sims, {"id2": 0.5, "sscd": 0.5}, positives, rankings=(("fused", 5),))
    folds = np.arange(q) % 4
    scores, whole = cross_validated_scores(c, ["id2", "sscd"], folds)
    assert np.array_equal(scores, whole)  # no window evidence: the same scores
    best = best_per_query(c, scores, q)
    assert best.correct[:20].all()
    assert best.score[:20].min() > best.score[20:].max()
