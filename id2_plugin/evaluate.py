"""Retrieval evaluation: the methods compared (every signal, the fused embedder, its decision model, PDQ and
pHash, all on the same normalised images) and the runner scoring them on one evaluation set.

Methods compared (all see the same normalised ``S x S x 3`` images, so only the representation differs):
``id2`` (VAE latent @ W, cosine), ``vae_raw`` (flattened VAE latent, cosine), ``pdq`` (PDQ hash of the
normalised image, 1 - hamming/256) and ``phash`` (imagehash pHash, 1 - hamming/64).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from ._lazy import require
from .decision import (
    DecisionModel,
    Evidence,
    candidate_background,
    ranking_scores,
    top_candidates,
    window_rankings,
)
from .framing import needs_second_look, query_windows
from .metrics import DEFAULT_K, Metrics, compute_metrics
from .signal_scores import best_window_cosine, slice_cosines

if TYPE_CHECKING:
    from .cache import LatentCache
    from .embedders.base import ImageEmbedder
    from .embedders.fused import FusedEmbedder

log = logging.getLogger(__name__)


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
        if cache is not None and (
            encoder is None or (cache.encoder is not encoder and cache.encoder.identity != encoder.identity)
        ):
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
    searched, their best window cosine. Only the references identification would re-score (the model's
    store rankings' candidates) keep their score; every other reference scores its decision score minus
    one: ranked after every candidate, never a match."""

    def __init__(self, embedder: FusedEmbedder, part_methods: Sequence[Method], decision: DecisionModel) -> None:
        super().__init__(embedder, part_methods)
        self.decision = decision
        op = decision.operating_point
        #: below this whole-image score the windows are not searched (``match.windows: auto``)
        self.window_floor = op.window_floor if op is not None else float("-inf")
        self.weights = {name: w for name, (_, _, w) in embedder.signals.items()}

    def _evidence(self, q: np.ndarray, r: np.ndarray, window: np.ndarray | None = None) -> tuple[Evidence, np.ndarray]:
        """The evidence of queries ``q`` against references ``r``: per-signal cosines (``Q x R``), the window
        cosines, and each query's background from its first ranking's candidates; and which references are
        candidates (``Q x R``)."""
        cos = slice_cosines(self.embedder, np.atleast_2d(q), r)
        tops = self._tops(cos, self.decision.candidates)
        background = candidate_background(cos, tops[0])  # type: ignore[arg-type]
        evidence = Evidence(
            cos, window, {name: np.repeat(b[:, None], r.shape[0], axis=1) for name, b in background.items()}
        )
        return evidence, self._chosen(tops, next(iter(cos.values())).shape)

    def _tops(self, cos: dict[str, np.ndarray], rankings: Sequence[tuple[str, int]]) -> list[np.ndarray]:
        """Per ranking, each query's top ``n`` references (``Q x n`` columns)."""
        return [top_candidates(ranking_scores(cos, self.weights, ranking), n) for ranking, n in rankings]

    @staticmethod
    def _chosen(tops: Sequence[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
        """``Q x R``: whether each reference is among a query's top ``n`` of some ranking."""
        chosen = np.zeros(shape, bool)
        for top in tops:
            np.put_along_axis(chosen, top, True, axis=1)
        return chosen

    def similarity(self, q: np.ndarray, r: np.ndarray) -> np.ndarray:
        evidence, chosen = self._evidence(q, r)
        score = self.decision.score(evidence)
        return np.where(chosen, score, score - 1.0).astype(np.float32)

    def window_scores(self, query: np.ndarray, windows: np.ndarray, r: np.ndarray) -> np.ndarray:
        """One query's scores against ``r`` with the evidence of its window vectors; the candidates grow by
        what the windows find in the rankings they can change (the fused cosine's, the window signal's)."""
        best_window = best_window_cosine(self.embedder, windows, r)
        evidence, chosen = self._evidence(query, r, best_window[None])
        window_cos = slice_cosines(self.embedder, windows, r)
        tops = self._tops(window_cos, window_rankings(self.decision.candidates))
        chosen = chosen[0] | self._chosen(tops, (len(windows), r.shape[0])).any(axis=0)
        score = self.decision.score(evidence)[0]
        return np.where(chosen, score, score - 1.0).astype(np.float32)


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


#: Names of the methods :func:`default_methods` can build, in report order.
METHOD_NAMES = ("fused", "fused_cosine", "id2", "vae_raw", "sscd", "pdq", "phash")


def default_methods(
    embedder: ImageEmbedder,
    cache: LatentCache | None = None,
    sscd: ImageEmbedder | None = None,
    decision: DecisionModel | None = None,
) -> list[Method]:
    """Every method the embedder makes possible: ``fused`` (a fused embedder, or a VAE embedder with W plus
    ``sscd`` given, fused with the default fit), ``id2`` (VAE + W), ``vae_raw``, ``sscd``, ``pdq``, ``phash``.
    With a ``decision`` model for the fused embedder, ``fused`` is scored by it (what identify decides on)
    and ``fused_cosine`` is the store's weighted-mean cosine beside it.

    ``cache`` is a latent cache of the VAE encoder (optional).
    """
    from .embedders.base import Embedder as _Embedder
    from .embedders.fused import FusedEmbedder

    latent = embedder.latent_part()
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
    from ._batching import pipelined
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
    positives = _positives_matrix(query_origin, len(queries), len(references))
    sims = score_methods(queries, references, methods, batch_size=batch_size, progress=progress)
    return metrics_by_group(sims, positives, k=k)[0]


def metrics_by_group(
    sims: dict[str, np.ndarray],
    positives: np.ndarray,
    *,
    groups: dict[str, Sequence[str | None]] | None = None,
    k: int | None = DEFAULT_K,
) -> tuple[dict[str, Metrics], dict[str, dict[str, dict[str, Metrics]]]]:
    """Each method's metrics from its ``Q x R`` scores (:func:`score_methods`), overall and per query group:
    ``groups`` maps a grouping (``source``, ``family``) to one label per query; returns
    ``(overall, {grouping: {label: {method: Metrics}}})``."""
    results = {name: compute_metrics(s, positives, k=k) for name, s in sims.items()}
    return results, _group_metrics(sims, positives, groups or {}, k)


def score_methods(
    queries: Sequence[np.ndarray],
    references: Sequence[np.ndarray],
    methods: Sequence[Method],
    *,
    batch_size: int = 64,
    progress: bool = True,
    windows: dict[str, tuple[str, float]] | None = None,
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


def windowed_similarity(
    method: Method,
    queries: Sequence[np.ndarray],
    qry: np.ndarray,
    ref: np.ndarray,
    sim: np.ndarray,
    mode: str,
    threshold: float,
) -> np.ndarray:
    """``sim`` with the query-window second look of the identify path (``match.windows``): the queries whose
    best whole-image score is below ``threshold`` (every query when ``mode`` is ``always``) keep, per
    reference, the best of the whole image and its windows."""
    embedder = method.embedder  # type: ignore[attr-defined]
    floor = getattr(method, "window_floor", float("-inf"))
    out = np.array(sim, copy=True)
    for i in range(len(queries)):
        best = float(out[i].max()) if out.shape[1] else None
        if needs_second_look(mode, best, threshold, floor):
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
