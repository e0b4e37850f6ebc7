"""The decision model: features on hand-computed evidence, the logistic fit, saving and loading, the
operating point's per-query rate at a store size, and identification deciding with it on real photos."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from id2_plugin.decision import (
    DEFAULT_RANKINGS,
    DecisionModel,
    Evidence,
    OperatingPoint,
    Route,
    candidate_background,
    check_rankings,
    feature_matrix,
    fit_logistic,
    parse_rankings,
    route_scores,
    sigmoid,
    top_candidates,
)
from id2_plugin.errors import ConfigError


def _op(**kw) -> OperatingPoint:
    base = dict(
        threshold=0.6,
        target_fpr=0.005,
        confidence=0.95,
        n_negatives=600,
        false_matches=0,
        fpr_upper_bound=0.005,
        n_references=1000,
        pair_fpr_upper_bound=5e-6,
        recall=0.9,
        window_floor=0.2,
        cosine_threshold=0.26,
    )
    return OperatingPoint(**{**base, **kw})


def test_features_on_hand_computed_evidence() -> None:
    e = Evidence(
        {"id2": np.array([0.5, 0.1]), "sscd": np.array([0.2, 0.3])},
        np.array([0.6, np.nan]),
        {"id2": np.array([0.1, 0.1]), "sscd": np.array([0.05, 0.05])},
    )
    x = feature_matrix(e, ["id2", "sscd_window", "id2_over_background", "sscd_window_over_background"])
    # window 0.6 beats the whole 0.2; NaN (not searched) keeps the whole 0.3
    np.testing.assert_allclose(x, [[0.5, 0.6, 0.4, 0.55], [0.1, 0.3, 0.0, 0.25]])
    cos = np.array([[0.9, 0.2, 0.1, 0.3, 0.0], [0.5, 0.4, 0.8, 0.7, 0.6]])
    np.testing.assert_array_equal(candidate_background({"id2": cos})["id2"], [0.2, 0.6])
    # the top 2 by a fused cosine: columns (0, 3) and (2, 3)
    top = top_candidates(np.array([[0.9, 0.0, 0.1, 0.5, 0.2], [0.0, 0.1, 0.9, 0.8, 0.2]]), 2)
    np.testing.assert_array_equal(top, [[0, 3], [2, 3]])
    np.testing.assert_allclose(candidate_background({"id2": cos}, top)["id2"], [0.6, 0.75])
    assert candidate_background({"id2": np.zeros((1, 0))})["id2"].tolist() == [0.0]


def test_missing_evidence_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="background"):
        feature_matrix(Evidence({"id2": np.zeros(2), "sscd": np.zeros(2)}), ["id2_over_background"])
    with pytest.raises(ConfigError, match="sscd"):
        feature_matrix(Evidence({"id2": np.zeros(2)}), ["sscd"])
    with pytest.raises(ConfigError, match="unknown"):
        feature_matrix(Evidence({"id2": np.zeros(2)}), ["nope"])


def test_logistic_fit_symmetric_toy_has_zero_intercept_and_separates() -> None:
    # Mirror-symmetric data: the intercept must be 0 and the slope positive; more regularisation, flatter.
    x = np.array([[-2.0], [-1.0], [-0.5], [0.5], [1.0], [2.0]])
    y = np.array([0, 0, 1, 0, 1, 1], bool)
    coef, b = fit_logistic(x, y, l2=0.01)
    assert b == pytest.approx(0.0, abs=1e-9)
    assert coef[0] > 0
    flat, _ = fit_logistic(x, y, l2=1.0)
    assert 0 < flat[0] < coef[0]
    p = sigmoid(x @ coef + b)
    assert p[0] < 0.5 < p[-1]
    with pytest.raises(ValueError, match="both classes"):
        fit_logistic(x, np.ones(6, bool))


def test_per_query_rate_grows_with_the_store() -> None:
    op = _op(pair_fpr_upper_bound=1e-6)
    assert op.per_query_fpr(1000) == pytest.approx(1 - (1 - 1e-6) ** 1000, rel=1e-9)
    assert op.per_query_fpr(10_000_000) == pytest.approx(1 - math.exp(-10), rel=1e-3)
    assert op.per_query_fpr(0) == 0.0


def test_model_round_trip_and_refusals(tmp_path: Path) -> None:
    model = DecisionModel(("id2", "sscd"), (3.0, 4.0), -2.0, "emb-identity", _op(), {"data": "toy"})
    path = model.save(tmp_path / "d.json")
    back = DecisionModel.load(path)
    assert back.to_dict() == model.to_dict() and back.source == str(path)
    e = Evidence({"id2": np.array([0.5]), "sscd": np.array([0.25])})
    assert back.score(e)[0] == pytest.approx(1 / (1 + math.exp(-(3 * 0.5 + 4 * 0.25 - 2))))
    doc = json.loads(path.read_text())
    doc["features"] = ["id2", "nope"]
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="unknown feature"):
        DecisionModel.load(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        DecisionModel.load(tmp_path / "broken.json")
    with pytest.raises(ConfigError, match="2 features but 1"):
        DecisionModel(("id2", "sscd"), (1.0,), 0.0, "x")


def test_a_model_file_names_where_its_candidates_come_from(tmp_path: Path) -> None:
    model = DecisionModel(("id2",), (1.0,), 0.0, "x", candidates=(("sscd", 5), ("fused", 2)))
    back = DecisionModel.load(model.save(tmp_path / "d.json"))
    assert back.candidates == (("sscd", 5), ("fused", 2))
    assert DecisionModel(("id2",), (1.0,), 0.0, "x").candidates == DEFAULT_RANKINGS
    doc = json.loads((tmp_path / "d.json").read_text())
    del doc["candidates"]
    (tmp_path / "old.json").write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="fit it again"):
        DecisionModel.load(tmp_path / "old.json")
    for bad in ((), (("id2", 0),), (("id2", 3), ("id2", 4))):
        with pytest.raises(ConfigError, match="each ranking once"):
            DecisionModel(("id2",), (1.0,), 0.0, "x", candidates=bad)
    assert parse_rankings(["id2:20", "fused:1"]) == (("id2", 20), ("fused", 1))
    for bad_spec in ("id2", "id2:0", ":3", "id2:x"):
        with pytest.raises(ConfigError, match="RANKING:N"):
            parse_rankings([bad_spec])
    check_rankings((("fused", 1), ("sscd", 2)), ["id2", "sscd"])
    with pytest.raises(ConfigError, match="'pdq'"):
        check_rankings((("pdq", 1),), ["id2", "sscd"])


def test_route_scores_on_hand_computed_values() -> None:
    # floor 0.2, threshold 0.6: below the floor 0; at it the threshold; halfway to 1 (0.6) halfway up (0.8)
    got = route_scores(np.array([0.1, 0.2, 0.6, 1.0, 1.5]), 0.2, 0.6)
    assert got == pytest.approx([0.0, 0.6, 0.8, 1.0, 1.0])


def test_a_route_matches_what_the_logistic_score_alone_does_not(tmp_path: Path) -> None:
    route = Route("id2_over_background", 0.2)
    model = DecisionModel(("id2", "sscd"), (3.0, 4.0), -2.0, "x", _op(threshold=0.6), route=route)
    # strong id2 over a low background, no SSCD evidence: the logistic score alone is below 0.6
    e = Evidence({"id2": np.array([0.4, 0.25]), "sscd": np.array([0.0, 0.0])}, None, {"id2": np.array([0.1, 0.1])})
    alone = sigmoid(3 * np.array([0.4, 0.25]) - 2)
    assert alone.max() < 0.6
    assert model.score(e) == pytest.approx([0.6 + 0.4 * (0.3 - 0.2) / 0.8, alone[1]])
    back = DecisionModel.load(model.save(tmp_path / "d.json"))
    assert back.route == route and back.score(e) == pytest.approx(model.score(e))
    with pytest.raises(ConfigError, match="route needs"):
        DecisionModel(("id2",), (1.0,), 0.0, "x", route=route)  # no operating point: no threshold to map onto
    with pytest.raises(ConfigError, match="route needs"):
        DecisionModel(("id2",), (1.0,), 0.0, "x", _op(), route=Route("nope", 0.2))


def test_shipped_model_holds_for_the_default_embedder_and_has_an_operating_point() -> None:
    from id2_plugin.assembly import default_decision_path

    model = DecisionModel.load(default_decision_path())
    op = model.operating_point
    assert op is not None and 0 < op.threshold < 1 and op.fpr_upper_bound <= op.target_fpr
    assert model.embedder.startswith("fused[") and op.n_negatives >= 500
    assert op.window_floor < op.threshold and -1 < op.cosine_threshold < 1


def test_threshold_auto_resolves_per_embedder(caplog, monkeypatch) -> None:
    """The shipped model decides only for the embedder it was fitted for; elsewhere the cosine decides, with the
    calibration's cosine threshold when the cosine is asked for, and a notice when nothing is calibrated."""
    from types import SimpleNamespace

    from id2_plugin import assembly
    from id2_plugin.assembly import cosine_threshold, decision_settings, default_decision_path
    from id2_plugin.config import MatchConfig

    monkeypatch.setattr(assembly, "_notified", set())  # notices are once per process: this test must see them

    shipped = DecisionModel.load(default_decision_path())
    op = shipped.operating_point
    assert op is not None
    same = SimpleNamespace(identity=shipped.embedder, signals={"id2": (0, 768, 0.45), "sscd": (768, 1280, 0.55)})
    model, threshold = decision_settings(MatchConfig(), same)
    assert model is not None and threshold == op.threshold
    assert decision_settings(MatchConfig(decision="cosine"), same) == (None, op.cosine_threshold)
    assert decision_settings(MatchConfig(threshold=0.7), same)[1] == 0.7
    assert cosine_threshold(MatchConfig(), same) == op.cosine_threshold
    other = SimpleNamespace(identity="fused[other]", signals=same.signals)
    with caplog.at_level("WARNING"):
        assert decision_settings(MatchConfig(), other) == (None, 0.5)
    assert "holds for another embedder" in caplog.text and "no calibrated operating point" in caplog.text
