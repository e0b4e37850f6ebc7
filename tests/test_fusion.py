"""Fusion weights: the grid, the choice and its cross-validation, on hand-made similarity matrices."""

from __future__ import annotations

import numpy as np
import pytest

from id2_plugin.embedders.fused import FusionFit
from id2_plugin.errors import ConfigError
from id2_plugin.fusion import best_weights, fit_fusion, weight_grid


def test_weight_grid_covers_the_simplex():
    grid = weight_grid(["a", "b"], 0.25)
    assert [g["a"] for g in grid] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert all(abs(sum(g.values()) - 1) < 1e-9 for g in grid)
    assert len(weight_grid(["a", "b", "c"], 0.5)) == 6  # (0,0,1) (0,.5,.5) (0,1,0) (.5,0,.5) (.5,.5,0) (1,0,0)


def _two_signals():
    # 4 queries, 3 references; query i's origin is reference i % 3.
    pos = np.zeros((4, 3), bool)
    pos[[0, 1, 2, 3], [0, 1, 2, 0]] = True
    # signal a ranks queries 0 and 1 right, b ranks 2 and 3 right; only a mix ranks all four right
    a = np.array([[0.9, 0.1, 0.2], [0.1, 0.9, 0.2], [0.6, 0.1, 0.5], [0.5, 0.6, 0.1]])
    b = np.array([[0.5, 0.6, 0.1], [0.6, 0.5, 0.1], [0.1, 0.1, 0.9], [0.9, 0.1, 0.1]])
    return {"a": a, "b": b}, pos


def test_best_weights_finds_the_mix_that_no_single_signal_reaches():
    sims, pos = _two_signals()
    w, curve = best_weights(sims, pos, weight_grid(["a", "b"], 0.1))
    assert 0.0 < w["a"] < 1.0
    best = max(curve, key=lambda c: c["top1"])
    assert best["top1"] == 1.0
    singles = {c["weights"]["a"]: c["top1"] for c in curve if c["weights"]["a"] in (0.0, 1.0)}
    assert singles == {0.0: 0.5, 1.0: 0.5}


def test_fit_fusion_cross_validation_reports_every_signal_on_the_same_folds():
    sims, pos = _two_signals()
    report = fit_fusion(sims, pos, folds=np.array([0, 0, 1, 1]), step=0.1)
    assert set(report.cross_validated) == {"fused", "a", "b"}
    assert report.cross_validated["a"]["top1"] == 0.5 and report.cross_validated["b"]["top1"] == 0.5
    assert len(report.fold_weights) == 2


def test_fusion_fit_normalises_weights_and_round_trips(tmp_path):
    fit = FusionFit({"id2": 2.0, "sscd": 6.0}, {"note": "x"})
    assert fit.weights == {"id2": 0.25, "sscd": 0.75}
    back = FusionFit.load(fit.save(tmp_path / "f.json"))
    assert back.weights == fit.weights and back.provenance == {"note": "x"}
    with pytest.raises(ConfigError, match="non-negative"):
        FusionFit({"id2": -1.0, "sscd": 1.0})
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        FusionFit.load(tmp_path / "bad.json")
