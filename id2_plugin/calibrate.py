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
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ConfigError

if TYPE_CHECKING:
    from .evaluate import Method
    from .stores.base import ReferenceStore

__all__ = [
    "Calibration",
    "calibrate_threshold",
    "calibration_scores",
    "CalibrationScores",
    "score_calibration_set",
    "store_best_matches",
    "clopper_pearson_upper",
    "min_negatives_for",
    "regularized_incomplete_beta",
    "save_histogram",
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


def calibration_scores(
    method: Method,
    queries: Sequence[np.ndarray],
    references: Sequence[np.ndarray],
    positives: np.ndarray,
    negatives: Sequence[np.ndarray] | None,
    *,
    batch_size: int = 64,
    progress: bool = False,
    chunk: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """Positive scores (each query vs each of its origins) and negative scores (each negative's best score
    against all references), from normalised images. ``negatives=None`` returns only positive scores (and an
    empty negative array), e.g. when negatives are scored against a store with :func:`store_best_matches`.

    ``positives`` is the ``Q x R`` ground truth (see :func:`~id2_plugin.eval_sets.load_pairs_for_eval`).
    """
    got = score_calibration_set(
        method, queries, references, positives, negatives, batch_size=batch_size, progress=progress, chunk=chunk
    )
    return got.positive_scores, got.negative_best


@dataclass(frozen=True)
class CalibrationScores:
    """Every score a calibration looks at: the queries against all references, each negative's best."""

    #: ``Q x R`` scores of the queries against every reference
    query_scores: np.ndarray
    positives: np.ndarray
    #: each negative's best score, and the index of the reference it was scored best against
    negative_best: np.ndarray
    negative_best_index: np.ndarray

    @property
    def positive_scores(self) -> np.ndarray:
        return self.query_scores[self.positives]


def score_calibration_set(
    method: Method,
    queries: Sequence[np.ndarray],
    references: Sequence[np.ndarray],
    positives: np.ndarray,
    negatives: Sequence[np.ndarray] | None,
    *,
    batch_size: int = 64,
    progress: bool = False,
    chunk: int = 1024,
) -> CalibrationScores:
    """The scores of :func:`calibration_scores`, with the full query matrix and the negatives' best references."""
    from .evaluate import embed_images

    ref = embed_images(method, references, batch_size, "references" if progress else False)
    qry = embed_images(method, queries, batch_size, "positives" if progress else False)
    positives = np.asarray(positives, dtype=bool)
    if positives.shape != (len(qry), len(ref)):
        raise ValueError(f"positives is {positives.shape}, expected {(len(qry), len(ref))}")
    best, index = np.zeros(0, np.float64), np.zeros(0, np.int64)
    if negatives is not None:
        neg = embed_images(method, negatives, batch_size, "negatives" if progress else False)
        # Chunked so a large negative set never materialises an N x R matrix at once.
        sims = [method.similarity(neg[s : s + chunk], ref) for s in range(0, len(neg), chunk)]
        best = np.concatenate([s.max(axis=1) for s in sims]).astype(np.float64)
        index = np.concatenate([s.argmax(axis=1) for s in sims])
    return CalibrationScores(method.similarity(qry, ref).astype(np.float64), positives, best, index)


def store_best_matches(
    store: ReferenceStore, vectors: np.ndarray, chunk: int = 1024
) -> tuple[np.ndarray, list[str | None]]:
    """Best score of each (embedded) negative against an existing store, and that reference's uri."""
    if store.info().count == 0:
        raise ConfigError("the reference store is empty: negatives need references to be scored against")
    scores: list[float] = []
    uris: list[str | None] = []
    for s in range(0, len(vectors), chunk):
        for m in store.query(vectors[s : s + chunk], k=1):
            scores.append(m[0].score if m else -1.0)
            uris.append(m[0].uri if m else None)
    return np.asarray(scores, dtype=np.float64), uris


def save_histogram(
    pos_scores: Sequence[float] | np.ndarray,
    neg_scores: Sequence[float] | np.ndarray,
    threshold: float,
    path: str,
    title: str = "score distribution",
) -> None:
    """Save overlaid histograms of positive and negative scores with the threshold as a PNG (Agg canvas)."""
    from ._lazy import require

    require("matplotlib")
    # Figure + FigureCanvasAgg directly: never switches the host's global matplotlib backend.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pos = np.asarray(pos_scores, dtype=np.float64)
    neg = np.asarray(neg_scores, dtype=np.float64)
    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    lo = float(min(pos.min(), neg.min(), threshold))
    hi = float(max(pos.max(), neg.max(), threshold))
    bins = np.linspace(lo, hi if hi > lo else lo + 1e-6, 60)
    ax.hist(neg, bins=bins, alpha=0.6, label=f"negatives: best score (n={len(neg)})", color="tab:red", density=True)
    ax.hist(
        pos, bins=bins, alpha=0.6, label=f"positives: query vs origin (n={len(pos)})", color="tab:blue", density=True
    )
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.4f}")
    ax.set_xlabel("cosine similarity")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


# -- the calibrate use case: choosing negatives, writing the config ------------------------------------------
def select_negatives(
    negative_dirs: Sequence[str | os.PathLike], known: Sequence[Path]
) -> tuple[list[Path], list[str], int]:
    """Images under ``negative_dirs`` that are not one of ``known`` (same path or same bytes).

    Negatives must have no origin among the references; an exact copy of a reference or query is certainly
    mislabelled, so it is dropped rather than counted as a false match. Returns (paths, their sha256, dropped).
    """
    from ._files import sha256_file_or_none
    from .media import iter_image_files

    known_paths = {Path(p).resolve() for p in known}
    known_hashes = {h for h in (sha256_file_or_none(p) for p in known_paths) if h}
    paths: list[Path] = []
    hashes: list[str] = []
    dropped = 0
    for p in iter_image_files(list(negative_dirs)):
        digest = sha256_file_or_none(p)
        if p.resolve() in known_paths or (digest is not None and digest in known_hashes):
            dropped += 1
            continue
        paths.append(p)
        hashes.append(digest or "")
    return paths, hashes, dropped


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


def calibration_config(
    cal: Calibration,
    *,
    embedder: dict[str, Any],
    store: dict[str, Any] | None,
    k: int,
    embedder_identity: str,
    data: str,
    date: str,
    hash_method: str | None = None,
    n_bits: int | None = None,
) -> dict[str, Any]:
    """The config document a calibration writes: the embedder it holds for, match.threshold, provenance.

    A hash baseline (``hash_method`` with ``n_bits``) records its threshold in the calibration block only,
    also as a Hamming distance: the plugin never matches with it, so match.threshold is left alone.
    """
    doc: dict[str, Any] = {"embedder": embedder}
    if store is not None:
        doc["store"] = store
    if hash_method is None:
        doc["match"] = {"k": k, "threshold": cal.threshold}
    fields = (
        "target",
        "target_value",
        "confidence",
        "threshold",
        "fpr_upper_bound",
        "fpr",
        "recall",
        "precision",
        "n_pos",
        "n_neg",
        "false_matches",
    )
    doc["calibration"] = {
        **{f: getattr(cal, f) for f in fields},
        "embedder": embedder_identity,
        "date": date,
        "data": data,
    }
    if hash_method is not None and n_bits:
        from .per_query import max_distance_bits

        doc["calibration"].update(method=hash_method, threshold_bits=max_distance_bits(cal.threshold, n_bits))
    return doc


def write_calibration_config(path: str | os.PathLike, doc: dict[str, Any]) -> Path:
    """Write ``doc`` as YAML atomically, after checking that it loads as a config."""
    import yaml

    from .config import load_config

    header = (
        (
            f"# Written by `id2-plugin calibrate` on {doc['calibration']['date']}.\n"
            f"# match.threshold is valid only for the embedder in calibration.embedder; recalibrate after changing\n"
            f"# the embedder, W, input size or resize policy.\n"
        )
        if "match" in doc
        else (
            f"# Written by `id2-plugin calibrate` on {doc['calibration']['date']}: a {doc['calibration'].get('method')}\n"
            f"# threshold for another system (HMA / ThreatExchange: calibration.threshold_bits); match.threshold is unset.\n"
        )
    )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(header + yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    try:
        load_config(tmp)  # what we write must load; a failure here is a bug, not a user error
    except ConfigError:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, out)
    return out
