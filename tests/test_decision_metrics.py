"""Decisions at a threshold, on hand-computed toy score matrices."""

from __future__ import annotations

import numpy as np
import pytest

from id2_plugin.decision_metrics import decision_metrics, format_decisions


def test_decisions_on_a_toy_matrix() -> None:
    scores = np.array(
        [
            [0.9, 0.1, 0.2],  # edit, origin 0 first and over 0.5: a correct MATCH
            [0.3, 0.6, 0.1],  # edit, wrong reference first over 0.5: a wrong-origin MATCH
            [0.4, 0.1, 0.0],  # edit, origin first but under 0.5: no MATCH
            [0.7, 0.7, 0.1],  # edit, origin 1 tied with a wrong one at the top: counts against
            [0.1, 0.55, 0.6],  # unrelated: a false match, 2 pairs over the threshold
            [0.2, 0.3, 0.1],  # unrelated: no match
        ]
    )
    positives = np.zeros_like(scores, bool)
    positives[0, 0] = positives[1, 0] = positives[2, 0] = positives[3, 1] = True
    m = decision_metrics(scores, positives, 0.5)
    assert (m.n_edits, m.matched, m.wrong_origin) == (4, 1, 2)
    assert m.recall == pytest.approx(0.25)
    assert (m.n_unrelated, m.false_matches, m.false_pairs) == (2, 1, 2)
    assert m.false_match_rate == pytest.approx(0.5) and m.pair_rate == pytest.approx(2 / 6)
    lo, hi = m.recall_interval
    assert lo < 0.25 < hi
    assert "1/4" in format_decisions("toy", m) and "1/2" in format_decisions("toy", m)


def test_no_unrelated_queries() -> None:
    m = decision_metrics(np.array([[0.9, 0.1]]), np.array([[True, False]]), 0.5)
    assert m.matched == 1 and m.n_unrelated == 0 and np.isnan(m.false_match_rate)
    with pytest.raises(ValueError, match="same Q x R"):
        decision_metrics(np.zeros((2, 2)), np.zeros((2, 3), bool), 0.5)
