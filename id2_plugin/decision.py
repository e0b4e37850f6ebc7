"""The match decision: each (query, reference) pair's evidence -> one calibrated score, and the operating point.

Retrieval ranks references by the fused cosine, a weighted mean of the signals' cosines (one vector, one
index, fast). As a *decision* that mean dilutes evidence: when id2 says 0.8 and SSCD 0.2 for an SDEdit-style
re-generation the mean halves it, and a portrait of another person can out-score a hard edit. The decision
model re-scores each query's store candidates (the top references of the rankings its file names: the
fused cosine, or one signal's alone, the store queried on that signal's slice) from each signal's own cosine
and, when the query windows were searched, the best window cosine, with a logistic model fitted by grouped
cross-validation on real edits AND unrelated photos (``id2-plugin fit-decision``). Its output is the
probability that the pair is an (edited) copy at the fitting set's class balance: one scale for every signal
mix, so one threshold holds.

The operating point ships with the model: the threshold chosen for a stated false-match rate per unrelated
query (one-sided Clopper-Pearson bound at the calibration store's size), the rate per (query, reference)
pair it implies, and the score below which searching the query windows cannot change the decision.

Features are pure functions of the evidence (:data:`FEATURES`), so a model file names its features and
any front end (identify, explain, the ThreatExchange index) computes the same score from the same cosines.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._jsonfile import read_json_object, write_json_atomic
from .errors import ConfigError

#: store candidates of a query's first ranking; their median cosine is the query's background
CANDIDATES = 20

#: the signal whose query windows are searched in the second look (a copy detector trained on crops)
WINDOW_SIGNAL = "sscd"

#: the ranking by the store's own (fused) cosine; any other ranking is one signal's cosine alone
FUSED = "fused"

#: where the decision takes each query's candidates (``fit-decision``'s default): the top 20 by id2 alone, whose
#: median cosines are the background, and the store's best by the fused cosine. id2's candidates carry the
#: re-posed and re-staged edits and keep unrelated queries' best scores lower; the fused best keeps copies
#: and crops, which SSCD finds and id2 may not (grouped cross-validation: docs/results.md)
DEFAULT_RANKINGS: tuple[tuple[str, int], ...] = (("id2", CANDIDATES), (FUSED, 1))


@dataclass(frozen=True)
class Evidence:
    """Cosines of N (query, reference) pairs: each signal's own, the best query window's (NaN where the
    windows were not searched), and per signal the query's background: the median cosine of its store
    candidates (how alike the references are to this query anyway: a portrait against a store of portraits)."""

    signals: Mapping[str, np.ndarray]
    window: np.ndarray | None = None
    background: Mapping[str, np.ndarray] | None = None

    def background_of(self, name: str) -> np.ndarray:
        if self.background is None or name not in self.background:
            raise ConfigError(f"the decision model needs the query's background for {name!r}, which was not given")
        return np.asarray(self.background[name], np.float64)

    def signal(self, name: str) -> np.ndarray:
        if name not in self.signals:
            raise ConfigError(
                f"the decision model needs the {name!r} signal, which this embedder does not have "
                f"(it has {', '.join(self.signals) or 'none'})"
            )
        return np.asarray(self.signals[name], np.float64)

    def window_or_whole(self) -> np.ndarray:
        """The best of the whole query's and its windows' cosine for the window signal."""
        whole = self.signal(WINDOW_SIGNAL)
        if self.window is None:
            return whole
        w = np.asarray(self.window, np.float64)
        return np.where(np.isnan(w), whole, np.fmax(whole, w))


def _logit_cos(x: np.ndarray) -> np.ndarray:
    # Cosines of copies bunch near 1, of unrelated images near 0: a log-odds scale spreads both ends.
    c = np.clip(x, -0.999, 0.999)
    return np.log1p(c) - np.log1p(-c)


#: feature name -> function of the evidence (one value per pair)
FEATURES: dict[str, Callable[[Evidence], np.ndarray]] = {
    "id2": lambda e: e.signal("id2"),
    "sscd": lambda e: e.signal("sscd"),
    "sscd_window": lambda e: e.window_or_whole(),
    "logit_id2": lambda e: _logit_cos(e.signal("id2")),
    "logit_sscd_window": lambda e: _logit_cos(e.window_or_whole()),
    "id2_x_sscd_window": lambda e: e.signal("id2") * e.window_or_whole(),
    "max_id2_sscd_window": lambda e: np.maximum(e.signal("id2"), e.window_or_whole()),
    "id2_over_background": lambda e: e.signal("id2") - e.background_of("id2"),
    "sscd_window_over_background": lambda e: e.window_or_whole() - e.background_of(WINDOW_SIGNAL),
}


def check_rankings(rankings: Sequence[tuple[str, int]], signals: Sequence[str]) -> None:
    """Raise :class:`ConfigError` unless every ranking is the fused cosine or one of ``signals``."""
    unknown = [r for r, _ in rankings if r != FUSED and r not in signals]
    if unknown:
        raise ConfigError(
            f"no signal {', '.join(map(repr, unknown))} to rank candidates by (rankings: {FUSED!r} or a signal: "
            f"{', '.join(signals)})"
        )


def window_rankings(rankings: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
    """The rankings a query's windows can change, and so bring candidates in: the fused cosine's and the
    window signal's (a window vector keeps every other signal's whole-image slice)."""
    return [(r, n) for r, n in rankings if r in (FUSED, WINDOW_SIGNAL)]


def parse_rankings(specs: Sequence[str]) -> tuple[tuple[str, int], ...]:
    """``RANKING:N`` strings (``id2:20``, ``fused:1``) as (ranking, n) pairs, in order."""
    out = []
    for spec in specs:
        name, _, n = spec.rpartition(":")
        if not name or not n.isdigit() or int(n) < 1:
            raise ConfigError(f"candidates {spec!r}: expected RANKING:N with N >= 1 (e.g. id2:20 or fused:1)")
        out.append((name, int(n)))
    return tuple(out)


def ranking_scores(sims: Mapping[str, np.ndarray], weights: Mapping[str, float], ranking: str) -> np.ndarray:
    """The ``Q x R`` scores a store ranking orders references by: the fused cosine (``weights``) for
    :data:`~id2_plugin.decision.FUSED`, else that signal's own cosine."""
    if ranking == FUSED:
        return sum(weights[name] * sims[name] for name in weights)
    check_rankings([(ranking, 1)], list(sims))
    return np.asarray(sims[ranking])


def top_candidates(scores: np.ndarray, n: int = CANDIDATES) -> np.ndarray:
    """``Q x n`` column indices of each query's top ``n`` references by a ranking's ``scores`` (``Q x R``),
    in the store's order (ties: the lower index first)."""
    return np.argsort(-scores, axis=1, kind="stable")[:, :n]


def candidate_background(cosines: Mapping[str, np.ndarray], top: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Each query's background per signal: the median cosine of its store candidates, the whole image's.

    ``cosines``: signal -> ``Q x R`` cosines; ``top``: the candidates' columns per query
    (:func:`top_candidates`; None: every column is a candidate, as in the store's answer). The one rule
    for the identify path, fitting and evaluation; a query without candidates has background 0.
    """
    out = {}
    for name, c in cosines.items():
        cands = np.asarray(c) if top is None else np.take_along_axis(np.asarray(c), top, axis=1)
        out[name] = np.median(cands, axis=1) if cands.shape[1] else np.zeros(len(cands))
    return out


#: the features ``fit-decision`` fits by default (chosen by grouped cross-validation: docs/results.md)
DEFAULT_FEATURES = ("id2_over_background", "sscd_window_over_background")


def feature_matrix(evidence: Evidence, names: Sequence[str]) -> np.ndarray:
    """The features of the evidence on a last axis: ``N x F`` for N pairs (``Q x R x F`` for matrices)."""
    unknown = [n for n in names if n not in FEATURES]
    if unknown:
        raise ConfigError(f"unknown decision feature(s) {', '.join(unknown)}; known: {', '.join(FEATURES)}")
    return np.stack([FEATURES[n](evidence) for n in names], axis=-1)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, np.float64)))


def fit_logistic(
    x: np.ndarray, y: np.ndarray, *, l2: float = 1e-3, weights: np.ndarray | None = None, iterations: int = 100
) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression by Newton's method: ``(coefficients, intercept)``.

    ``weights`` per sample (e.g. to balance classes); the intercept is not penalised. Deterministic.
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if x.ndim != 2 or len(x) != len(y) or not len(y):
        raise ValueError(f"need N x F features and N labels, got {x.shape} and {y.shape}")
    if not (0 < y.sum() < len(y)):
        raise ValueError("both classes must be present to fit a decision model")
    w = np.ones(len(y)) if weights is None else np.asarray(weights, np.float64)
    xb = np.hstack([x, np.ones((len(x), 1))])
    beta = np.zeros(xb.shape[1])
    penalty = np.full(xb.shape[1], l2 * w.sum())
    penalty[-1] = 0.0
    for _ in range(iterations):
        p = sigmoid(xb @ beta)
        grad = xb.T @ (w * (p - y)) + penalty * beta
        hess = (xb * (w * p * (1 - p))[:, None]).T @ xb + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.abs(step).max() < 1e-10:
            break
    return beta[:-1], float(beta[-1])


@dataclass(frozen=True)
class OperatingPoint:
    """The shipped threshold on the decision score and what it was shown to achieve."""

    threshold: float
    #: requested false-match rate per unrelated query, and the confidence of its bound
    target_fpr: float
    confidence: float
    #: unrelated queries scored, how many matched, and the one-sided Clopper-Pearson bound on the rate
    n_negatives: int
    false_matches: int
    fpr_upper_bound: float
    #: references the negatives were searched against, and the implied bound per (query, reference) pair
    n_references: int
    pair_fpr_upper_bound: float
    #: share of the calibration edits reported as a MATCH with the right origin
    recall: float
    #: below this whole-image score the query windows are not searched: no calibration query crossed the
    #: threshold with them from there
    window_floor: float
    #: the fused cosine's threshold for the same target on the same negatives, for deciding on one distance
    #: (``match.decision: cosine``, ThreatExchange / OpenMediaMatch and perception hosts)
    cosine_threshold: float

    def per_query_fpr(self, n_references: int) -> float:
        """The false-match bound per unrelated query at a store of ``n_references`` (grows with the store)."""
        return float(-math.expm1(n_references * math.log1p(-min(self.pair_fpr_upper_bound, 1 - 1e-12))))


#: the feature of the second way to a MATCH ``fit-decision`` fits by default (docs/results.md, "A second way to
#: a MATCH"): id2's evidence alone, for edits id2 finds and SSCD does not (instruction-based editors)
ROUTE_FEATURE = "id2_over_background"


@dataclass(frozen=True)
class Route:
    """A second way to a MATCH: a candidate whose ``feature`` alone is above every calibration negative's
    (``floor``, set as the operating point is) scores at least the operating point's threshold, rising
    linearly to 1 as the feature goes from ``floor`` to 1."""

    feature: str
    floor: float


def route_scores(values: np.ndarray, floor: float, threshold: float) -> np.ndarray:
    """The route's decision score of each feature value: 0 below ``floor``, else ``threshold`` at the floor
    rising linearly to 1 at a feature value of 1. One scale with the logistic score, so that the decision is
    always ``score >= threshold``."""
    rise = np.clip((np.asarray(values, np.float64) - floor) / max(1.0 - floor, 1e-9), 0.0, 1.0)
    return np.where(values >= floor, threshold + (1.0 - threshold) * rise, 0.0)


@dataclass(frozen=True)
class DecisionModel:
    """A logistic model over named features of the evidence, the embedder it holds for, its operating point."""

    features: tuple[str, ...]
    coefficients: tuple[float, ...]
    intercept: float
    #: identity of the embedder whose cosines it was fitted on: the model holds for that embedder only
    embedder: str
    operating_point: OperatingPoint | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    #: the store rankings each query's candidates come from, in order, as (ranking, how many): ``fused`` (the
    #: store's cosine) or a signal's name (its cosine alone); the first ranking's candidates are the background
    candidates: tuple[tuple[str, int], ...] = DEFAULT_RANKINGS
    #: a second way to a MATCH (None: the logistic score alone); it needs the operating point's threshold
    route: Route | None = None
    source: str | None = None

    def __post_init__(self) -> None:
        if len(self.features) != len(self.coefficients):
            raise ConfigError(
                f"decision model: {len(self.features)} features but {len(self.coefficients)} coefficients"
            )
        unknown = [n for n in self.features if n not in FEATURES]
        if unknown:
            raise ConfigError(f"decision model {self.source or ''}: unknown feature(s) {', '.join(unknown)}")
        if self.route is not None and (self.route.feature not in FEATURES or self.operating_point is None):
            raise ConfigError(
                f"decision model {self.source or ''}: its route needs a known feature and an operating point, "
                f"got {self.route}"
            )
        names = [r for r, _ in self.candidates]
        if not self.candidates or len(set(names)) < len(names) or any(n < 1 for _, n in self.candidates):
            raise ConfigError(
                f"decision model {self.source or ''}: candidates must name each ranking once with at least one "
                f"candidate, got {list(self.candidates)}"
            )

    def score(self, evidence: Evidence) -> np.ndarray:
        """The decision score in [0, 1] of each pair (the evidence's shape: a vector or a matrix of pairs)."""
        x = feature_matrix(evidence, self.features)
        score = sigmoid(x @ np.asarray(self.coefficients) + self.intercept)
        if self.route is None or self.operating_point is None:
            return score
        values = FEATURES[self.route.feature](evidence)
        return np.maximum(score, route_scores(values, self.route.floor, self.operating_point.threshold))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("source")
        return d

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], source: str | None = None) -> DecisionModel:
        if "candidates" not in doc:
            raise ConfigError(
                f"decision model {source or ''} does not say where its candidates come from (a file of an earlier "
                "release): fit it again with `id2-plugin fit-decision`"
            )
        try:
            op = doc.get("operating_point")
            return cls(
                features=tuple(str(f) for f in doc["features"]),
                coefficients=tuple(float(c) for c in doc["coefficients"]),
                intercept=float(doc["intercept"]),
                embedder=str(doc["embedder"]),
                operating_point=OperatingPoint(**op) if op else None,
                candidates=tuple((str(r), int(n)) for r, n in doc["candidates"]),
                route=Route(str(doc["route"]["feature"]), float(doc["route"]["floor"])) if doc.get("route") else None,
                provenance=dict(doc.get("provenance") or {}),
                source=source,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"decision model {source or ''} is not one: {exc}") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> DecisionModel:
        return cls.from_dict(read_json_object(path, "decision model"), str(path))

    def save(self, path: str | os.PathLike) -> Path:
        return write_json_atomic(path, self.to_dict())
