"""Decision-threshold calibration with a statistical guarantee on the false-match rate.

Inputs are two score samples: **positives** (a query against its own origin) and **negatives** (the BEST
score an image without any origin in the reference set gets against that set — exactly the score the
:class:`~id2_plugin.pipeline.Pipeline` compares with ``match.threshold`` when an unrelated image comes in).
A match is declared when ``score >= threshold``.

* ``target_fpr``: the threshold is the LOWEST one (most recall) whose one-sided Clopper-Pearson upper
  confidence bound on the false-match rate is ``<= target_fpr``. With ``n`` negatives and zero false
  matches that bound is ``1 - alpha**(1/n)`` (alpha = 1 - confidence), so at least
  ``ln(alpha) / ln(1 - target)`` negatives (~3/target at 95%) are needed; fewer is refused.
* ``target_precision``: the lowest threshold whose conservative precision
  ``TP / (TP + n_neg * fpr_upper_bound)`` reaches the target. Precision depends on the ratio of positives
  to negatives: this is the precision at the calibration set's ratio, with the false matches replaced by
  their upper bound.

Among the thresholds giving the same counts, the midpoint between the lowest accepted score and the
highest rejected score is returned, so a tiny score perturbation does not flip a calibration sample.

This module is pure statistics on score samples; producing the scores is :mod:`.calibration_scores`,
and the files of the ``calibrate`` use case (negatives, histogram, YAML config) :mod:`.calibration_files`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .errors import ConfigError

__all__ = [
    "Calibration",
    "calibrate_threshold",
    "check_enough_negatives",
    "clopper_pearson_upper",
    "min_negatives_for",
    "regularized_incomplete_beta",
]


# --------------------------------------------------------------------------------------------------
# Clopper-Pearson (pure Python: the regularized incomplete beta by continued fraction, then bisection)
# --------------------------------------------------------------------------------------------------
def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta (modified Lentz; Numerical Recipes 6.4)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 100_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            return h
    raise ArithmeticError(f"incomplete beta continued fraction did not converge for a={a}, b={b}, x={x}")


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """``I_x(a, b)`` for ``a, b > 0`` and ``0 <= x <= 1``."""
    if a <= 0 or b <= 0:
        raise ValueError(f"a and b must be > 0, got a={a}, b={b}")
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    # The continued fraction converges fast for x < (a+1)/(a+b+2); use the symmetry I_x(a,b) = 1 - I_{1-x}(b,a).
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def clopper_pearson_upper(k: int, n: int, confidence: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper bound on a rate after ``k`` events in ``n`` trials.

    The bound ``p`` solves ``P(Binomial(n, p) <= k) = 1 - confidence``, i.e. ``p`` is the ``confidence``
    quantile of ``Beta(k + 1, n - k)``; closed forms: ``1 - (1 - confidence)**(1/n)`` for ``k = 0``,
    ``confidence**(1/n)`` for ``k = n - 1`` and 1 for ``k = n``.
    """
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if k == n:
        return 1.0
    if k == 0:
        return -math.expm1(math.log1p(-confidence) / n)  # 1 - alpha**(1/n) without cancellation
    a, b = k + 1.0, float(n - k)
    lo, hi = 0.0, 1.0
    # I_p(k+1, n-k) increases with p; bisection to double precision (~60 halvings).
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if regularized_incomplete_beta(a, b, mid) < confidence:
            lo = mid
        else:
            hi = mid
    return hi


def min_negatives_for(target_fpr: float, confidence: float = 0.95) -> int:
    """Fewest negatives for which zero false matches proves ``fpr <= target_fpr`` at ``confidence``."""
    n = math.ceil(math.log1p(-confidence) / math.log1p(-target_fpr))
    # Guard the float rounding of the closed form with the exact definition.
    while n > 1 and clopper_pearson_upper(0, n - 1, confidence) <= target_fpr:
        n -= 1
    while clopper_pearson_upper(0, n, confidence) > target_fpr:
        n += 1
    return n


def _max_false_matches(n: int, target_fpr: float, confidence: float) -> int:
    """Largest ``k`` with ``clopper_pearson_upper(k, n) <= target_fpr`` (-1 if even k = 0 fails)."""
    if clopper_pearson_upper(0, n, confidence) > target_fpr:
        return -1
    lo, hi = 0, n  # invariant: bound(lo) <= target < bound(hi) (bound(n) = 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if clopper_pearson_upper(mid, n, confidence) <= target_fpr:
            lo = mid
        else:
            hi = mid
    return lo


# --------------------------------------------------------------------------------------------------
# threshold choice
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Calibration:
    """A calibrated decision threshold and what it achieves on the calibration samples."""

    threshold: float
    #: "fpr" or "precision"
    target: str
    target_value: float
    confidence: float
    n_pos: int
    n_neg: int
    #: negatives scoring >= threshold
    false_matches: int
    fpr: float
    #: one-sided Clopper-Pearson upper bound on the false-match rate at ``confidence``
    fpr_upper_bound: float
    #: fraction of positives scoring >= threshold
    recall: float
    #: empirical precision at the calibration set's positive:negative ratio
    precision: float
    #: TP / (TP + n_neg * fpr_upper_bound)
    precision_lower_bound: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _as_scores(x: Sequence[float] | np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).ravel()
    if a.size == 0:
        raise ConfigError(f"no {what} scores to calibrate on")
    if not np.isfinite(a).all():
        raise ValueError(f"{what} scores must be finite")
    return a


def _target_value(target_fpr: float | None, target_precision: float | None, confidence: float) -> float:
    """The one target given, after refusing none or both, or a target or confidence outside (0, 1)."""
    if (target_fpr is None) == (target_precision is None):
        raise ConfigError("give exactly one of target_fpr and target_precision")
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"confidence must be in (0, 1), got {confidence}")
    target_value = float(target_fpr if target_fpr is not None else target_precision)  # type: ignore[arg-type]
    if not 0.0 < target_value < 1.0:
        raise ConfigError(f"the target must be in (0, 1), got {target_value}")
    return target_value


class _FprBound:
    """``k -> clopper_pearson_upper(k, n_neg, confidence)``, memoised: the precision scan asks repeatedly."""

    def __init__(self, n_neg: int, confidence: float) -> None:
        """The bound for ``n_neg`` negatives at ``confidence``."""
        self.n_neg, self.confidence = n_neg, confidence
        self._cache: dict[int, float] = {}

    def __call__(self, k: int) -> float:
        """The upper bound on the false-match rate with ``k`` false matches."""
        if k not in self._cache:
            self._cache[k] = clopper_pearson_upper(k, self.n_neg, self.confidence)
        return self._cache[k]


def _fpr_feasible(fp: np.ndarray, n_neg: int, target: float, confidence: float, bound: _FprBound) -> np.ndarray:
    """Indices of the cuts whose false-match bound meets ``target``; refuses too few negatives."""
    k_max = _max_false_matches(n_neg, target, confidence)
    if k_max < 0:
        need = min_negatives_for(target, confidence)
        raise ConfigError(
            f"too few negatives: {n_neg} cannot show a false-match rate <= {target:g} at "
            f"{confidence:.0%} confidence even with zero false matches (upper bound "
            f"{bound(0):.3g}); need at least {need} negatives"
        )
    return np.flatnonzero(fp <= k_max)  # fp grows with j: a prefix


def _precision_feasible(
    tp: np.ndarray, fp: np.ndarray, n_pos: int, n_neg: int, target: float, confidence: float, bound: _FprBound
) -> np.ndarray:
    """The most inclusive cut whose conservative precision meets ``target`` (empty if none); refuses too few samples."""
    best_possible = n_pos / (n_pos + n_neg * bound(0))
    if best_possible < target:
        need_pos = math.ceil(target * n_neg * bound(0) / (1.0 - target))
        raise ConfigError(
            f"too few samples: with {n_pos} positives and {n_neg} negatives the best provable precision is "
            f"{best_possible:.4f} < {target:g} (even zero false matches may hide up to "
            f"{n_neg * bound(0):.1f} at {confidence:.0%} confidence); need at least {need_pos} positives "
            f"at this many negatives"
        )
    # The conservative precision is not monotone in the threshold: scan from the most inclusive cut,
    # skipping (cheaply) cuts whose empirical precision already misses the target.
    for j in range(len(tp) - 1, -1, -1):
        t, f = int(tp[j]), int(fp[j])
        if t == 0 or t / (t + f) < target:
            continue
        if t / (t + n_neg * bound(f)) >= target:
            return np.array([j])
    return np.zeros(0, dtype=np.int64)


def _threshold_at(u: np.ndarray, j: int) -> float:
    """The threshold accepting the scores >= ``u[j]``: midway to the next lower score when that is representable."""
    threshold = float(u[j])
    if j + 1 < len(u):
        mid = float(u[j]) / 2.0 + float(u[j + 1]) / 2.0
        if float(u[j + 1]) < mid <= float(u[j]):
            threshold = mid
    return threshold


def _calibration(
    threshold: float,
    pos: np.ndarray,
    neg: np.ndarray,
    target: str,
    target_value: float,
    confidence: float,
    bound: _FprBound,
) -> Calibration:
    """What ``threshold`` achieves on the samples ``pos`` and ``neg``."""
    n_pos, n_neg = len(pos), len(neg)
    n_tp = int(np.count_nonzero(pos >= threshold))
    n_fp = int(np.count_nonzero(neg >= threshold))
    ub = bound(n_fp)
    return Calibration(
        threshold=threshold,
        target=target,
        target_value=target_value,
        confidence=confidence,
        n_pos=n_pos,
        n_neg=n_neg,
        false_matches=n_fp,
        fpr=n_fp / n_neg,
        fpr_upper_bound=ub,
        recall=n_tp / n_pos,
        precision=n_tp / (n_tp + n_fp) if n_tp + n_fp else 1.0,
        precision_lower_bound=n_tp / (n_tp + n_neg * ub) if n_tp else 0.0,
    )


def calibrate_threshold(
    pos_scores: Sequence[float] | np.ndarray,
    neg_scores: Sequence[float] | np.ndarray,
    target_fpr: float | None = None,
    target_precision: float | None = None,
    confidence: float = 0.95,
) -> Calibration:
    """Choose the decision threshold for ``target_fpr`` or ``target_precision`` (exactly one).

    Raises :class:`~id2_plugin.errors.ConfigError` when the samples are too small to prove the target
    even with no false match, or when no threshold meeting the target keeps any positive.
    """
    target_value = _target_value(target_fpr, target_precision, confidence)
    pos = np.sort(_as_scores(pos_scores, "positive"))
    neg = np.sort(_as_scores(neg_scores, "negative"))
    n_pos, n_neg = len(pos), len(neg)

    # Candidate cuts: accept every distinct score >= u[j] (u descending). Counts via binary search.
    u = np.unique(np.concatenate([pos, neg]))[::-1]
    tp = n_pos - np.searchsorted(pos, u, side="left")
    fp = n_neg - np.searchsorted(neg, u, side="left")
    bound = _FprBound(n_neg, confidence)
    if target_fpr is not None:
        feasible = _fpr_feasible(fp, n_neg, target_value, confidence, bound)
    else:
        feasible = _precision_feasible(tp, fp, n_pos, n_neg, target_value, confidence, bound)
    if feasible.size == 0 or tp[feasible[-1]] == 0:
        raise ConfigError(
            f"no threshold reaches the target {target_value:g} at {confidence:.0%} confidence while accepting any "
            f"positive: every threshold that keeps a positive lets through too many of the {n_neg} negatives for "
            f"the bound to hold (max negative {neg[-1]:.4f}, max positive {pos[-1]:.4f}); give more negatives or "
            "a looser target"
        )
    threshold = _threshold_at(u, int(feasible[-1]))
    target = "fpr" if target_fpr is not None else "precision"
    return _calibration(threshold, pos, neg, target, target_value, confidence, bound)


def check_enough_negatives(n: int, target_fpr: float | None, confidence: float) -> None:
    """Refuse (before minutes of encoding) a negative set too small to show ``target_fpr`` at ``confidence``."""
    if target_fpr is None or not (0.0 < target_fpr < 1.0 and 0.0 < confidence < 1.0):
        return
    need = min_negatives_for(target_fpr, confidence)
    if n < need:
        raise ConfigError(
            f"too few negatives: {n} cannot show a false-match rate <= {target_fpr:g} at "
            f"{confidence:.0%} confidence even with zero false matches; need at least {need} negatives"
        )
