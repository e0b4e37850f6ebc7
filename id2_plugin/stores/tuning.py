"""Pick the cheapest ANN search setting (IVF ``nprobe`` / HNSW ``efSearch``) that reaches a target recall@1.

Recall is measured against exact search over the same vectors. Queries default to stored vectors perturbed
to a given cosine similarity (``query_similarity``): an edited copy is *near* its original, never equal, and
a stored vector queried unchanged is found by IVF at ``nprobe=1`` (it lies in its own list), which would
make any setting look perfect.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError, IncompatibleStoreError
from . import _faiss_index as fx

if TYPE_CHECKING:
    from .faiss_store import FaissStore

IVF_GRID = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 4096)
HNSW_GRID = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 2048)
#: Re-ranking depths tried (below the configured one) once nprobe is chosen for a PQ index.
RERANK_GRID = (1, 2, 3, 4, 6, 8, 12, 16)


@dataclass(frozen=True)
class TunePoint:
    """One evaluated setting."""

    value: int
    recall_at_1: float
    ms_per_query: float


@dataclass(frozen=True)
class TuneResult:
    """The chosen setting and the recall curve that justified it.

    ``parameter`` is ``nprobe``, ``efSearch`` or None when there is nothing to tune (exact index, or an IVF
    store still below its training size); ``reached`` says whether ``target_recall`` was met (if not,
    ``value`` is the best setting tried).
    """

    index_type: str
    parameter: str | None
    value: int | None
    recall_at_1: float
    target_recall: float
    reached: bool
    n_queries: int
    n_vectors: int
    query_similarity: float | None
    curve: tuple[TunePoint, ...] = ()
    note: str = ""
    saved: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "index_type": self.index_type,
            "parameter": self.parameter,
            "value": self.value,
            "recall_at_1": self.recall_at_1,
            "target_recall": self.target_recall,
            "reached": self.reached,
            "n_queries": self.n_queries,
            "n_vectors": self.n_vectors,
            "query_similarity": self.query_similarity,
            "curve": [vars(p) for p in self.curve],
            "note": self.note,
            "saved": self.saved,
            **self.extra,
        }


def perturbed_queries(vectors: np.ndarray, similarity: float, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors at cosine ``similarity`` from each row of ``vectors`` (random orthogonal direction)."""
    v = np.asarray(vectors, dtype=np.float32)
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    if similarity >= 1.0:
        return np.ascontiguousarray(v)
    noise = rng.standard_normal(v.shape).astype(np.float32)
    noise -= (noise * v).sum(axis=1, keepdims=True) * v
    noise /= np.maximum(np.linalg.norm(noise, axis=1, keepdims=True), 1e-12)
    q = similarity * v + np.sqrt(max(0.0, 1.0 - similarity**2)) * noise
    return np.ascontiguousarray(q / np.linalg.norm(q, axis=1, keepdims=True), dtype=np.float32)


def recall_at_1(
    found: np.ndarray,
    gt_ids: np.ndarray,
    gt_scores: np.ndarray,
    fetch: Callable[[np.ndarray], np.ndarray],
    queries: np.ndarray,
) -> float:
    """Fraction of queries whose ANN top-1 is the exact top-1 (or an exact tie with it)."""
    hit = found == gt_ids
    miss = np.flatnonzero(~hit & (found >= 0))
    if len(miss):
        ids = found[miss]
        order = np.argsort(ids)
        vecs = np.empty((len(ids), queries.shape[1]), np.float32)
        vecs[order] = fetch(ids[order])
        exact = (queries[miss] * vecs).sum(axis=1)
        hit[miss] = exact >= gt_scores[miss] - 1e-5
    return float(hit.mean()) if len(hit) else 1.0


def sweep(
    search: Callable[[np.ndarray, int], np.ndarray],
    values: tuple[int, ...],
    queries: np.ndarray,
    gt_ids: np.ndarray,
    gt_scores: np.ndarray,
    fetch: Callable[[np.ndarray], np.ndarray],
    target_recall: float,
) -> tuple[TunePoint, ...]:
    """Evaluate ``search(queries, value) -> top-1 ids`` for increasing values until the target is reached."""
    curve: list[TunePoint] = []
    for value in values:
        t0 = time.perf_counter()
        found = search(queries, value)
        ms = (time.perf_counter() - t0) * 1e3 / max(len(queries), 1)
        point = TunePoint(
            value=int(value), recall_at_1=recall_at_1(found, gt_ids, gt_scores, fetch, queries), ms_per_query=ms
        )
        curve.append(point)
        if point.recall_at_1 >= target_recall:
            break
    return tuple(curve)


def _choose(curve: tuple[TunePoint, ...], target: float) -> tuple[TunePoint, bool]:
    for p in curve:
        if p.recall_at_1 >= target:
            return p, True
    best = max(p.recall_at_1 for p in curve)
    return next(p for p in curve if p.recall_at_1 == best), False


def _grid(kind: str, nlist: int | None) -> tuple[str, tuple[int, ...]]:
    if kind == "hnsw":
        return "efSearch", HNSW_GRID
    assert nlist is not None
    values = tuple(v for v in IVF_GRID if v < nlist) + (nlist,)
    return "nprobe", values


def _queries(
    queries: np.ndarray | None,
    ids: np.ndarray,
    fetch: Callable[[np.ndarray], np.ndarray],
    dim: int,
    n_queries: int,
    similarity: float,
    seed: int,
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if queries is not None:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != dim:
            raise IncompatibleStoreError(f"queries of shape {q.shape} do not match dimension {dim}")
        return q
    if n_queries < 1:
        raise ConfigError(f"n_queries must be >= 1, got {n_queries}")
    picked = np.sort(rng.choice(ids, size=min(n_queries, len(ids)), replace=False))
    return perturbed_queries(fetch(picked), similarity, rng)


def tune_search(
    store_or_vectors: FaissStore | np.ndarray,
    queries: np.ndarray | None = None,
    target_recall: float = 0.99,
    *,
    n_queries: int = 1000,
    query_similarity: float = 0.8,
    index: str = "ivf_flat",
    index_options: Mapping[str, Any] | None = None,
    save: bool = True,
    seed: int = 0,
) -> TuneResult:
    """Find the cheapest nprobe (IVF) / efSearch (HNSW) whose recall@1 against exact search is >= target.

    ``store_or_vectors`` is a :class:`FaissStore` (its ANN index is tuned over the vectors it indexes; with
    ``save`` the value is written to the store so every reader uses it) or an ``N x dim`` array of
    L2-normalised vectors (an index of type ``index`` with ``index_options`` is built in memory to tune).
    ``queries`` default to ``n_queries`` stored vectors perturbed to cosine ``query_similarity``.
    """
    if not 0.0 < target_recall <= 1.0:
        raise ConfigError(f"target_recall={target_recall}: expected a value in (0, 1]")
    if not -1.0 <= query_similarity <= 1.0:
        raise ConfigError(f"query_similarity={query_similarity}: expected a cosine in [-1, 1]")
    if isinstance(store_or_vectors, np.ndarray):
        return _tune_vectors(
            store_or_vectors, queries, target_recall, n_queries, query_similarity, index, index_options or {}, seed
        )
    return _tune_store(store_or_vectors, queries, target_recall, n_queries, query_similarity, save, seed)


def _tune_vectors(
    vectors: np.ndarray,
    queries: np.ndarray | None,
    target: float,
    n_queries: int,
    similarity: float,
    index: str,
    options: Mapping[str, Any],
    seed: int,
) -> TuneResult:
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    spec = fx.IndexSpec.create(index, x.shape[1], options)
    if not spec.snapshot:
        return TuneResult(
            index_type=index,
            parameter=None,
            value=None,
            recall_at_1=1.0,
            target_recall=target,
            reached=True,
            n_queries=0,
            n_vectors=len(x),
            query_similarity=None,
            note="exact index: nothing to tune",
        )
    ids = np.arange(len(x), dtype=np.int64)

    def fetch(i: np.ndarray) -> np.ndarray:
        return x[i]

    main, facts = fx.build_ann_index(spec, ids, fetch)
    q = _queries(queries, ids, fetch, x.shape[1], n_queries, similarity, seed)
    gt_scores, gt_ids = fx.exact_top1(q, ids, fetch)
    param, values = _grid(spec.kind, facts.get("nlist"))
    rerank = int(spec.options.get("rerank", 0))

    def search(qq: np.ndarray, value: int) -> np.ndarray:
        kw = {"nprobe": value} if param == "nprobe" else {"ef_search": value}
        return fx.ann_search(main, spec.kind, qq, 1, rerank=rerank, fetch=fetch, **kw)[1][:, 0]

    curve = sweep(search, values, q, gt_ids, gt_scores, fetch, target)
    chosen, reached = _choose(curve, target)
    return TuneResult(
        index_type=spec.kind,
        parameter=param,
        value=chosen.value,
        recall_at_1=chosen.recall_at_1,
        target_recall=target,
        reached=reached,
        n_queries=len(q),
        n_vectors=len(x),
        query_similarity=None if queries is not None else similarity,
        curve=curve,
        extra=facts,
    )


def _tune_rerank(
    view: Any,
    params: dict[str, Any],
    q: np.ndarray,
    gt_ids: np.ndarray,
    gt_scores: np.ndarray,
    fetch: Callable[[np.ndarray], np.ndarray],
    target: float,
) -> dict[str, Any]:
    """The smallest re-ranking depth (at most the configured one) that keeps ``target`` at the chosen nprobe.

    Each candidate re-scored is a raw-row read, the main cost of a PQ query once nprobe is small.
    """
    current = int(params["rerank"])

    def search(qq: np.ndarray, value: int) -> np.ndarray:
        return view.search(qq, 1, {**params, "rerank": value})[1][:, 0]  # type: ignore[no-any-return]

    curve = sweep(search, tuple(r for r in RERANK_GRID if r < current), q, gt_ids, gt_scores, fetch, target)
    best = next((p.value for p in curve if p.recall_at_1 >= target), current)
    return {"rerank": best, "rerank_curve": [vars(p) for p in curve]}


def _tune_store(
    store: FaissStore,
    queries: np.ndarray | None,
    target: float,
    n_queries: int,
    similarity: float,
    save: bool,
    seed: int,
) -> TuneResult:
    kind = store.index_type
    base = dict(index_type=kind, target_recall=target)
    with store.tuning_view() as view:  # the index must not be refreshed (mutated) while it is being measured
        ids, fetch = view.ids, view.fetch
        if view.index is None:
            note = (
                "exact index: nothing to tune"
                if kind in ("flat", "flat_fp16")
                else f"{kind} index not built yet (store below its training/merge size): searches are exact"
            )
            return TuneResult(
                parameter=None,
                value=None,
                recall_at_1=1.0,
                reached=True,
                n_queries=0,
                n_vectors=len(ids),
                query_similarity=None,
                note=note,
                **base,
            )  # type: ignore[arg-type]
        ivf = fx.ivf_of(view.index)
        param, values = _grid(kind, int(ivf.nlist) if ivf is not None else None)
        q = _queries(queries, ids, fetch, store.dim, n_queries, similarity, seed)
        gt_scores, gt_ids = fx.exact_top1(q, ids, fetch)

        def search(qq: np.ndarray, value: int) -> np.ndarray:
            return view.search(qq, 1, {**view.params, param: value})[1][:, 0]

        curve = sweep(search, values, q, gt_ids, gt_scores, fetch, target)
        chosen, reached = _choose(curve, target)
        extra: dict[str, Any] = {}
        if reached and kind in fx.PQ_TYPES and view.params.get("rerank"):
            extra = _tune_rerank(view, {**view.params, param: chosen.value}, q, gt_ids, gt_scores, fetch, target)
    result = TuneResult(
        parameter=param,
        value=chosen.value,
        recall_at_1=chosen.recall_at_1,
        reached=reached,
        n_queries=len(q),
        n_vectors=len(ids),
        query_similarity=None if queries is not None else similarity,
        curve=curve,
        extra=extra,
        **base,
    )  # type: ignore[arg-type]
    if save:
        rerank = {"rerank": extra["rerank"]} if "rerank" in extra else {}
        store.save_search_params(
            {param: chosen.value, **rerank},
            tuned={
                "parameter": param,
                "value": chosen.value,
                "recall_at_1": chosen.recall_at_1,
                "target_recall": target,
                "reached": reached,
                "n_queries": len(q),
                "n_vectors": int(len(ids)),
                "query_similarity": result.query_similarity,
                **rerank,
            },
        )
        result = TuneResult(**{**result.__dict__, "saved": True})
    return result
