"""Retrieval evaluation: ISC-2021-style metrics, baseline methods and a runner comparing them.

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

Methods compared (all see the same normalised ``S x S x 3`` images, so only the representation differs):
``id2`` (VAE latent @ W, cosine), ``vae_raw`` (flattened VAE latent, cosine), ``pdq`` (PDQ hash of the
normalised image, 1 - hamming/256) and ``phash`` (imagehash pHash, 1 - hamming/64).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from ._files import sha256_file_or_none
from ._lazy import require
from .decision import CANDIDATES, WINDOW_SIGNAL, DecisionModel, Evidence
from .errors import MediaError
from .media import iter_image_files

if TYPE_CHECKING:
    from .cache import LatentCache
    from .embedders.base import ImageEmbedder
    from .embedders.fused import FusedEmbedder

log = logging.getLogger(__name__)

#: Predictions kept per query for the pooled metrics (ISC lets each query submit a short ranked list).
DEFAULT_K = 100

__all__ = [
    "DEFAULT_K",
    "EmbedderMethod",
    "EvalSet",
    "Method",
    "METHOD_NAMES",
    "Metrics",
    "PDQMethod",
    "PHashMethod",
    "RetrievalScores",
    "compute_metrics",
    "default_methods",
    "format_table",
    "FusedMethod",
    "embed_images",
    "evaluate_methods",
    "evaluate_methods_by_group",
    "metrics_by_group",
    "score_methods",
    "query_labels",
    "hamming_similarity",
    "load_images",
    "latent_part",
    "load_pairs_for_eval",
    "micro_average_precision",
    "prepare_eval_set",
    "recall_at_precision",
    "top_k_predictions",
]


# --------------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------------
# methods
# --------------------------------------------------------------------------------------------------
@runtime_checkable
class Method(Protocol):
    """A retrieval method: images -> descriptors, and a similarity (higher = more similar) between them."""

    name: str

    def embed(self, images: np.ndarray) -> np.ndarray:
        """``N x S x S x 3`` uint8 normalised images -> ``N x d`` descriptors."""
        ...

    def similarity(self, q: np.ndarray, r: np.ndarray) -> np.ndarray:
        """``Q x d`` and ``R x d`` descriptors -> ``Q x R`` similarities."""
        ...


class EmbedderMethod:
    """An :class:`~id2_plugin.embedders.base.ImageEmbedder` as a method (cosine of its vectors).

    ``id2`` (VAE latent with W), ``vae_raw`` (without), ``sscd``, or any other embedder. For a VAE embedder
    latents go through ``cache`` (a :class:`~id2_plugin.cache.LatentCache`) when given, so a photo is
    encoded once across methods of one run.
    """

    def __init__(self, embedder: ImageEmbedder, cache: LatentCache | None = None, name: str | None = None) -> None:
        encoder = getattr(embedder, "encoder", None)
        if cache is not None and (encoder is None or (cache.encoder is not encoder and cache.encoder.identity != encoder.identity)):
            raise ValueError("the latent cache belongs to another encoder than the embedder's")
        self.embedder = embedder
        self.cache = cache
        self.name = name or embedder.name

    def embed(self, images: np.ndarray) -> np.ndarray:
        if self.cache is None:
            return self.embedder.embed_arrays(images)
        from .embedders.base import fit_arrays

        return self.embedder.project(self.cache.encode_arrays(fit_arrays(images, self.embedder.input_size)))  # type: ignore[attr-defined]

    def similarity(self, q: np.ndarray, r: np.ndarray) -> np.ndarray:
        return np.asarray(q, np.float32) @ np.asarray(r, np.float32).T


class FusedMethod(EmbedderMethod):
    """The ``fused`` embedder as a method; in :func:`evaluate_methods` its descriptors are assembled from
    those of its signals' methods when they are evaluated in the same run (nothing is embedded twice)."""

    def __init__(self, embedder: FusedEmbedder, part_methods: Sequence[Method], name: str = "fused") -> None:
        super().__init__(embedder, None, name)
        self.parts = [m.name for m in part_methods]
        self.part_methods = list(part_methods)

    def embed(self, images: np.ndarray) -> np.ndarray:
        return self.combine([m.embed(images) for m in self.part_methods])

    def combine(self, descriptors: Sequence[np.ndarray]) -> np.ndarray:
        return self.embedder.combine(descriptors)  # type: ignore[attr-defined]


class DecisionMethod(FusedMethod):
    """The fused embedder scored by a decision model (:mod:`id2_plugin.decision`): the score the identify
    path compares with ``match.threshold``, from each signal's cosine and, for queries whose windows were
    searched, their best window cosine."""

    def __init__(self, embedder: FusedEmbedder, part_methods: Sequence[Method], decision: DecisionModel) -> None:
        super().__init__(embedder, part_methods)
        self.decision = decision
        op = decision.operating_point
        #: below this whole-image score the windows are not searched (``match.windows: auto``)
        self.window_floor = op.window_floor if op is not None else float("-inf")

    def _evidence(self, q: np.ndarray, r: np.ndarray, window: np.ndarray | None = None) -> Evidence:
        """The evidence of queries ``q`` against references ``r``: per-signal cosines (``Q x R``), the window
        cosines, and each query's background from its top candidates by the fused cosine (as the store ranks)."""
        q = np.atleast_2d(q)
        cos = {name: np.asarray(q[:, a:b], np.float32) @ np.asarray(r[:, a:b], np.float32).T / max(w, 1e-12)
               for name, (a, b, w) in self.embedder.signals.items()}
        fused = sum(w * cos[name] for name, (_, _, w) in self.embedder.signals.items())
        top = np.argsort(-fused, axis=1, kind="stable")[:, :CANDIDATES]
        background = {name: np.repeat(np.median(np.take_along_axis(c, top, axis=1), axis=1, keepdims=True),
                                      c.shape[1], axis=1) for name, c in cos.items()}
        return Evidence(cos, window, background)

    def similarity(self, q: np.ndarray, r: np.ndarray) -> np.ndarray:
        return self.decision.score(self._evidence(q, r)).astype(np.float32)

    def window_scores(self, query: np.ndarray, windows: np.ndarray, r: np.ndarray) -> np.ndarray:
        """One query's scores against ``r`` with the evidence of its window vectors."""
        a, b, w = self.embedder.signals[WINDOW_SIGNAL]
        best_window = (np.asarray(windows[:, a:b], np.float32) @ np.asarray(r[:, a:b], np.float32).T).max(axis=0) / w
        return self.decision.score(self._evidence(query, r, best_window[None])).astype(np.float32)[0]


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def hamming_similarity(q: np.ndarray, r: np.ndarray, n_bits: int, chunk_bytes: int = 1 << 26) -> np.ndarray:
    """``1 - hamming / n_bits`` between bit-packed uint8 hashes ``Q x B`` and ``R x B`` (memory bounded)."""
    q = np.ascontiguousarray(q, dtype=np.uint8)
    r = np.ascontiguousarray(r, dtype=np.uint8)
    if q.ndim != 2 or r.ndim != 2 or q.shape[1] != r.shape[1]:
        raise ValueError(f"hashes must be Q x B and R x B uint8 arrays, got {q.shape} and {r.shape}")
    out = np.empty((len(q), len(r)), dtype=np.float32)
    rows = max(1, chunk_bytes // max(1, r.size))
    for s in range(0, len(q), rows):
        x = np.bitwise_xor(q[s : s + rows, None, :], r[None, :, :])
        dist = _POPCOUNT[x].sum(axis=2, dtype=np.int32)
        out[s : s + rows] = 1.0 - dist / np.float32(n_bits)
    return out


class PDQMethod:
    """Meta's PDQ perceptual hash (``pdqhash``) of the normalised image; similarity ``1 - hamming/256``.

    The hash is computed on the same normalised (squashed to ``S x S``) image the VAE sees rather than on
    the original file: PDQ downsamples to 64x64 internally anyway, and all methods then compare identical
    pixels. PDQ's quality score is not used (no hash is discarded).
    """

    name = "pdq"
    n_bits = 256

    def embed(self, images: np.ndarray) -> np.ndarray:
        pdqhash = require("pdqhash")
        out = np.empty((len(images), self.n_bits // 8), dtype=np.uint8)
        for i, im in enumerate(images):
            bits, _quality = pdqhash.compute(np.ascontiguousarray(im, dtype=np.uint8))
            out[i] = np.packbits(np.asarray(bits, dtype=np.uint8))
        return out

    def similarity(self, q: np.ndarray, r: np.ndarray) -> np.ndarray:
        return hamming_similarity(q, r, self.n_bits)


class PHashMethod:
    """``imagehash.phash`` (64-bit DCT hash) of the normalised image; similarity ``1 - hamming/64``."""

    name = "phash"
    n_bits = 64

    def embed(self, images: np.ndarray) -> np.ndarray:
        imagehash = require("imagehash")
        from PIL import Image

        out = np.empty((len(images), self.n_bits // 8), dtype=np.uint8)
        for i, im in enumerate(images):
            h = imagehash.phash(Image.fromarray(np.asarray(im, dtype=np.uint8), "RGB"))
            out[i] = np.packbits(np.asarray(h.hash, dtype=np.uint8).ravel())
        return out

    def similarity(self, q: np.ndarray, r: np.ndarray) -> np.ndarray:
        return hamming_similarity(q, r, self.n_bits)


def latent_part(embedder: ImageEmbedder) -> Any:
    """The VAE (+ W) :class:`~id2_plugin.Embedder` inside ``embedder``: itself, a fused embedder's part, or None."""
    if hasattr(embedder, "encoder"):
        return embedder
    return next((p for p in getattr(embedder, "parts", ()) if hasattr(p, "encoder")), None)


#: Names of the methods :func:`default_methods` can build, in report order.
METHOD_NAMES = ("fused", "fused_cosine", "id2", "vae_raw", "sscd", "pdq", "phash")


def default_methods(embedder: ImageEmbedder, cache: LatentCache | None = None, sscd: ImageEmbedder | None = None,
                    decision: DecisionModel | None = None) -> list[Method]:
    """Every method the embedder makes possible: ``fused`` (a fused embedder, or a VAE embedder with W plus
    ``sscd`` given, fused with the default fit), ``id2`` (VAE + W), ``vae_raw``, ``sscd``, ``pdq``, ``phash``.
    With a ``decision`` model for the fused embedder, ``fused`` is scored by it (what identify decides on)
    and ``fused_cosine`` is the store's weighted-mean cosine beside it.

    ``cache`` is a latent cache of the VAE encoder (optional).
    """
    from .embedders.base import Embedder as _Embedder
    from .embedders.fused import FusedEmbedder

    latent = latent_part(embedder)
    fused = embedder if isinstance(embedder, FusedEmbedder) else None
    if fused is not None:
        sscd = fused.part("sscd") or sscd
    elif embedder.name == "sscd":
        sscd = embedder
    by_name: dict[str, Method] = {}
    if latent is not None and latent.projection is not None:
        by_name["id2"] = EmbedderMethod(latent, cache, name="id2")
    if latent is not None:
        by_name["vae_raw"] = EmbedderMethod(_Embedder(latent.encoder, None), cache, name="vae_raw")
    if sscd is not None:
        by_name["sscd"] = EmbedderMethod(sscd, None, name="sscd")
    if fused is None and latent is not None and latent.projection is not None and sscd is not None:
        from .assembly import load_fusion

        fused = FusedEmbedder([latent, sscd], load_fusion("default"), resize_policy=latent.encoder.resize_policy)
    if fused is not None and all(p.name in by_name for p in fused.parts):
        parts = [by_name[p.name] for p in fused.parts]
        if decision is not None and decision.embedder == fused.identity:
            by_name["fused"] = DecisionMethod(fused, parts, decision)
            by_name["fused_cosine"] = FusedMethod(fused, parts, name="fused_cosine")
        else:
            by_name["fused"] = FusedMethod(fused, parts)
    by_name["pdq"] = PDQMethod()
    by_name["phash"] = PHashMethod()
    return [by_name[n] for n in METHOD_NAMES if n in by_name]


# --------------------------------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------------------------------
def embed_images(
    method: Method, images: Sequence[np.ndarray], batch_size: int | str = 64, progress: bool | str = False
) -> np.ndarray:
    """Descriptors of ``images`` (a sequence of ``S x S x 3`` arrays or an ``N x S x S x 3`` array), in batches
    of ``batch_size`` (an int or ``auto``) through the shared batching component."""
    from ._pipelining import pipelined
    from ._progress import progress_bar

    def model(_: list[int], chunk: list[np.ndarray]) -> np.ndarray:
        return method.embed(np.stack(chunk))

    rows = []
    with progress_bar(progress, len(images), method.name, leave=False) as bar:
        for done in pipelined(range(len(images)), images.__getitem__, model, batch_size=batch_size, workers=1):
            rows.append(done.output)
            bar.update(1)
    if not rows:
        raise ValueError(f"{method.name}: no images to embed")
    return np.stack(rows)


def _positives_matrix(query_origin: Any, n_q: int, n_r: int) -> np.ndarray:
    if isinstance(query_origin, np.ndarray) and query_origin.ndim == 2:
        pos = query_origin.astype(bool)
        if pos.shape != (n_q, n_r):
            raise ValueError(f"positives matrix is {pos.shape}, expected {(n_q, n_r)}")
        return pos
    if len(query_origin) != n_q:
        raise ValueError(f"{len(query_origin)} query origins for {n_q} queries")
    pos = np.zeros((n_q, n_r), dtype=bool)
    for qi, origin in enumerate(query_origin):
        if origin is None:
            continue
        if not 0 <= int(origin) < n_r:
            raise ValueError(f"query {qi}: origin index {origin} is outside the {n_r} references")
        pos[qi, int(origin)] = True
    return pos


def evaluate_methods(
    queries: Sequence[np.ndarray],
    query_origin: Sequence[int | None] | np.ndarray,
    references: Sequence[np.ndarray],
    methods: Sequence[Method],
    *,
    k: int | None = DEFAULT_K,
    batch_size: int = 64,
    progress: bool = True,
) -> dict[str, Metrics]:
    """Score every method on the same queries and references; returns ``{method.name: Metrics}``.

    ``queries`` / ``references``: normalised ``S x S x 3`` uint8 images (a list or an ``N x S x S x 3``
    array). ``query_origin``: per query the index of its origin in ``references`` (None = no origin), or a
    ``Q x R`` boolean matrix of positives (several origins per query).
    """
    return evaluate_methods_by_group(queries, query_origin, references, methods, k=k, batch_size=batch_size, progress=progress)[0]


def evaluate_methods_by_group(
    queries: Sequence[np.ndarray],
    query_origin: Sequence[int | None] | np.ndarray,
    references: Sequence[np.ndarray],
    methods: Sequence[Method],
    *,
    groups: dict[str, Sequence[str | None]] | None = None,
    k: int | None = DEFAULT_K,
    batch_size: int = 64,
    progress: bool = True,
    windows: dict[str, tuple[str, float]] | None = None,
) -> tuple[dict[str, Metrics], dict[str, dict[str, dict[str, Metrics]]]]:
    """:func:`evaluate_methods`, plus metrics per query group: ``groups`` maps a grouping (``source``,
    ``family``) to one label per query; returns ``(overall, {grouping: {label: {method: Metrics}}})``.
    The same as :func:`metrics_by_group` over :func:`score_methods` (``windows``: see there).
    """
    positives = _positives_matrix(query_origin, len(queries), len(references))
    sims = score_methods(queries, references, methods, batch_size=batch_size, progress=progress, windows=windows)
    return metrics_by_group(sims, positives, groups=groups, k=k)


def metrics_by_group(
    sims: dict[str, np.ndarray], positives: np.ndarray, *, groups: dict[str, Sequence[str | None]] | None = None,
    k: int | None = DEFAULT_K,
) -> tuple[dict[str, Metrics], dict[str, dict[str, dict[str, Metrics]]]]:
    """The metrics of :func:`evaluate_methods_by_group` from the methods' ``Q x R`` scores (:func:`score_methods`)."""
    results = {name: compute_metrics(s, positives, k=k) for name, s in sims.items()}
    return results, _group_metrics(sims, positives, groups or {}, k)


def score_methods(
    queries: Sequence[np.ndarray], references: Sequence[np.ndarray], methods: Sequence[Method], *,
    batch_size: int = 64, progress: bool = True, windows: dict[str, tuple[str, float]] | None = None,
) -> dict[str, np.ndarray]:
    """Each method's ``Q x R`` similarity matrix, in the order of ``methods``.

    A method with ``parts`` and ``combine`` (:class:`FusedMethod`) is assembled from its parts'
    descriptors when they were computed in this run. ``windows`` maps a method name to ``(match.windows,
    match.threshold)``: that method is scored with the query windows, and its whole-image scores are
    reported beside it as ``<name>_whole``.
    """
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise ValueError(f"method names must be unique, got {names}")
    sims: dict[str, np.ndarray] = {}
    done: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    # Combined methods go after the signals they combine, whatever the report order.
    for method in sorted(methods, key=lambda m: bool(getattr(m, "parts", None))):
        parts = getattr(method, "parts", None)
        if parts and all(p in done for p in parts):
            ref = method.combine([done[p][0] for p in parts])  # type: ignore[attr-defined]
            qry = method.combine([done[p][1] for p in parts])  # type: ignore[attr-defined]
        else:
            ref = embed_images(method, references, batch_size, f"{method.name}: references" if progress else False)
            qry = embed_images(method, queries, batch_size, f"{method.name}: queries" if progress else False)
        done[method.name] = (ref, qry)
        sims[method.name] = method.similarity(qry, ref)
        if method.name in (windows or {}):
            sims[method.name + WHOLE_SUFFIX] = sims[method.name]
            sims[method.name] = windowed_similarity(method, queries, qry, ref, sims[method.name], *windows[method.name])  # type: ignore[index]
    return {n: sims[n] for name in names for n in (name, name + WHOLE_SUFFIX) if n in sims}


#: suffix of the whole-image-only row reported beside a method evaluated with query windows
WHOLE_SUFFIX = "_whole"


def windowed_similarity(method: Method, queries: Sequence[np.ndarray], qry: np.ndarray, ref: np.ndarray,
                        sim: np.ndarray, mode: str, threshold: float) -> np.ndarray:
    """``sim`` with the query-window second look of the identify path (``match.windows``): the queries whose
    best whole-image score is below ``threshold`` (every query when ``mode`` is ``always``) keep, per
    reference, the best of the whole image and its windows."""
    from .framing import needs_second_look, query_windows

    embedder = method.embedder  # type: ignore[attr-defined]
    floor = getattr(method, "window_floor", float("-inf"))
    out = np.array(sim, copy=True)
    for i in range(len(queries)):
        best = float(out[i].max()) if out.shape[1] else None
        if needs_second_look(mode, best, threshold) and (mode == "always" or (best is not None and best >= floor)):
            _, crops = query_windows(np.asarray(queries[i]))
            windows = embedder.embed_windows(crops, qry[i])
            if isinstance(method, DecisionMethod):
                out[i] = method.window_scores(qry[i], windows, ref)
            else:
                out[i] = np.maximum(out[i], method.similarity(windows, ref).max(axis=0))
    return out


def _group_metrics(
    sims: dict[str, np.ndarray], positives: np.ndarray, groups: dict[str, Sequence[str | None]], k: int | None
) -> dict[str, dict[str, dict[str, Metrics]]]:
    out: dict[str, dict[str, dict[str, Metrics]]] = {}
    for grouping, labels in groups.items():
        labels_arr = np.array([lab if lab is not None else "" for lab in labels], dtype=object)
        if len(labels_arr) != len(positives):
            raise ValueError(f"{grouping}: {len(labels_arr)} labels for {len(positives)} queries")
        table: dict[str, dict[str, Metrics]] = {}
        for label in sorted({lab for lab in labels_arr if lab}):
            sel = np.flatnonzero(labels_arr == label)
            if positives[sel].any():
                table[label] = {name: compute_metrics(s[sel], positives[sel], k=k) for name, s in sims.items()}
        out[grouping] = table
    return out


# --------------------------------------------------------------------------------------------------
# evaluation sets from files
# --------------------------------------------------------------------------------------------------
@dataclass
class EvalSet:
    """Normalised images of an evaluation set, with what was skipped and why."""

    queries: list[np.ndarray]
    references: list[np.ndarray]
    positives: np.ndarray
    query_paths: list[Path]
    reference_paths: list[Path]
    #: human-readable reasons, one per skipped file or query
    skipped: list[str]


def load_pairs_for_eval(
    manifest: str | os.PathLike | Sequence[str | os.PathLike], distractors: Sequence[str | os.PathLike] = (),
    max_distractors: int | None = None,
) -> tuple[list[Path], list[Path], np.ndarray]:
    """Queries, references and ground truth from a pairs manifest (or several, pooled) plus distractor folders/files.

    References are the manifest's distinct origins and twins (in order of first appearance) followed by the
    distractor images; a query's origin and its ``twins`` (near-identical copies) are all correct answers.
    Origins with identical bytes are one reference (the first file named): two files of one photo would
    otherwise tie and a pessimistic tie turns the correct answer into a miss. A distractor whose bytes equal
    an origin or a query is dropped (with a log warning): it would be an unlabelled copy and turn a correct
    answer into a "wrong" one. Manifest errors (malformed line, missing file) raise
    :class:`~id2_plugin.errors.ConfigError` naming the line. ``max_distractors`` keeps the first N
    distractors kept (folders in sorted order): a reproducible subset.
    """
    from .pairs import load_pairs

    manifests = [manifest] if isinstance(manifest, (str, os.PathLike)) else list(manifest)
    pairs = [p for m in manifests for p in load_pairs(m)]
    queries: list[Path] = []
    q_index: dict[Path, int] = {}
    references: list[Path] = []
    r_index: dict[Path, int] = {}
    by_digest: dict[str, int] = {}
    links: list[tuple[int, int]] = []

    def reference(path: Path) -> int:
        if path not in r_index:
            digest = sha256_file_or_none(path)
            if digest is not None and digest in by_digest:
                r_index[path] = by_digest[digest]
            else:
                r_index[path] = len(references)
                references.append(path)
                if digest is not None:
                    by_digest[digest] = r_index[path]
        return r_index[path]

    for pair in pairs:
        if pair.query not in q_index:
            q_index[pair.query] = len(queries)
            queries.append(pair.query)
        links += [(q_index[pair.query], reference(o)) for o in (pair.origin, *pair.twins)]
    known = {h for h in (sha256_file_or_none(p) for p in queries) if h} | set(by_digest)
    dropped = 0
    n_origins = len(references)
    for path in iter_image_files(list(distractors)):
        if max_distractors is not None and len(references) - n_origins >= max_distractors:
            break
        path = path.resolve()
        if path in r_index or path in q_index:
            dropped += 1
            continue
        digest = sha256_file_or_none(path)
        if digest is not None and digest in known:
            dropped += 1
            continue
        if digest is not None:
            known.add(digest)
        r_index[path] = len(references)
        references.append(path)
    if dropped:
        log.warning("dropped %d distractor(s) identical to a query, an origin or another distractor", dropped)
    positives = np.zeros((len(queries), len(references)), dtype=bool)
    for qi, ri in links:
        positives[qi, ri] = True
    return queries, references, positives


def query_labels(manifest: str | os.PathLike | Sequence[str | os.PathLike], query_paths: Sequence[Path], key: str) -> list[str | None]:
    """Per query the manifest's ``key`` (``source``, ``family``, ``model``) of its first pair (None if absent)."""
    from .pairs import load_pairs

    found: dict[Path, str | None] = {}
    manifests = [manifest] if isinstance(manifest, (str, os.PathLike)) else list(manifest)
    for pair in (p for m in manifests for p in load_pairs(m)):
        value = getattr(pair, key, None) if key in ("source", "model", "prompt") else pair.extra.get(key)
        found.setdefault(pair.query, None if value is None else str(value))
    return [found.get(Path(q)) for q in query_paths]


def load_images(
    paths: Sequence[Path], normalise: Callable[[Path], np.ndarray], progress: bool | str = False
) -> tuple[list[np.ndarray], list[int], list[MediaError]]:
    """Normalise ``paths`` (decoded in threads, in order); unreadable ones are skipped. Returns (images, kept
    indices, errors)."""
    from ._pipelining import prefetch
    from ._progress import progress_bar

    images, kept, errors = [], [], []
    with progress_bar(progress, len(paths), "loading", leave=False) as bar:
        for done, image in prefetch(paths, normalise, depth=32):
            if done.error is not None:
                errors.append(done.error)
            else:
                images.append(image)
                kept.append(done.index)
            bar.update(1)
    return images, kept, errors


def prepare_eval_set(
    query_paths: Sequence[Path],
    reference_paths: Sequence[Path],
    positives: np.ndarray,
    normalise: Callable[[Path], np.ndarray],
    progress: bool = True,
) -> EvalSet:
    """Decode and normalise every image once, skipping unreadable files.

    An unreadable reference is removed from the set; a query whose every origin was unreadable is removed
    too (it would otherwise silently become a "no origin" query). Reasons are listed in ``skipped``.
    """
    q_imgs, q_kept, q_err = load_images(query_paths, normalise, "loading queries" if progress else False)
    r_imgs, r_kept, r_err = load_images(reference_paths, normalise, "loading references" if progress else False)
    skipped = [f"unreadable, skipped: {e}" for e in [*q_err, *r_err]]
    pos = positives[np.ix_(q_kept, r_kept)] if q_kept and r_kept else np.zeros((len(q_kept), len(r_kept)), bool)
    had_origin = positives[q_kept].any(axis=1) if q_kept else np.zeros(0, bool)
    keep = ~had_origin | pos.any(axis=1)
    for j in np.flatnonzero(~keep):
        skipped.append(f"query {query_paths[q_kept[j]]} skipped: its origin could not be read")
    q_final = [q_kept[j] for j in np.flatnonzero(keep)]
    return EvalSet(
        queries=[q_imgs[j] for j in np.flatnonzero(keep)],
        references=r_imgs,
        positives=pos[keep],
        query_paths=[query_paths[i] for i in q_final],
        reference_paths=[reference_paths[i] for i in r_kept],
        skipped=skipped,
    )


def format_table(results: dict[str, Metrics]) -> str:
    """An aligned plain-text table of ``results`` (one row per method)."""

    def num(x: float | None) -> str:
        return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"

    header = ["method", "top1", "mAP", "micro_ap", "R@P90", "thr@P90", "R@P99.9", "thr@P99.9"]
    rows = [
        [name, num(m.top1), num(m.mAP), num(m.micro_ap), num(m.recall_at_p90), num(m.threshold_at_p90),
         num(m.recall_at_p999), num(m.threshold_at_p999)]
        for name, m in results.items()
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
