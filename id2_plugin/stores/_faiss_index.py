"""FAISS index construction, training and search parameters shared by the FAISS store modules and :mod:`.tuning`.

Nothing here touches the disk: these helpers turn an index type plus options into FAISS objects, train
them from a sample, and build the per-query search parameters (nprobe, efSearch, deleted-id filter).
faiss is imported lazily (``require("faiss")``) so importing this module stays cheap.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._lazy import require
from ..errors import ConfigError

#: Every supported ``store.index`` value.
INDEX_TYPES: tuple[str, ...] = ("flat", "flat_fp16", "ivf_flat", "ivf_pq", "ivf_pq_fs", "hnsw")
#: Types whose FAISS structure (centroids, graph) is persisted as an index file ("snapshot").
SNAPSHOT_TYPES = frozenset({"ivf_flat", "ivf_pq", "ivf_pq_fs", "hnsw"})
#: Types that must be trained before vectors can be added.
TRAINED_TYPES = frozenset({"ivf_flat", "ivf_pq", "ivf_pq_fs"})
#: Product-quantised types: ``m`` sub-quantizers must divide the dimension.
PQ_TYPES = frozenset({"ivf_pq", "ivf_pq_fs"})
#: PQ fast-scan (SIMD lookups in registers) exists only for 4-bit codes.
FAST_SCAN_NBITS = 4

#: With ``nlist: auto`` an IVF index is trained once the store holds this many vectors. Below it an exact
#: scan costs a few milliseconds per query, and FAISS's minimum of 39 training points per list
#: (nlist ~ 2 sqrt(N) -> 283 lists at 20k) is comfortably met.
AUTO_TRAIN_MIN = 20_000

_COMMON: dict[str, Any] = {
    # seconds a writer waits for another writer before giving up with StoreError
    "lock_timeout": 60.0,
    # the exact buffer is folded into the ANN index once it holds max(merge_min, merge_ratio * indexed)
    "merge_min": 10_000,
    "merge_ratio": 0.1,
    # seed of the training sample and of the tuning queries
    "seed": 0,
    # FAISS threads for a single-query search: one avoids OpenMP start-up and barrier waits, which dominate a
    # millisecond search and blow up its tail when other processes hold the cores; 0 = all cores
    "query_threads": 1,
    # FAISS threads for a batch of queries (0 = all cores): there the work is large enough to split
    "batch_threads": 0,
    # exact float32 search of at least this many queries goes through numpy's BLAS matmul (see exact_search)
    "blas_min_batch": 20,
}
_DEFAULTS: dict[str, dict[str, Any]] = {
    "flat": {},
    "flat_fp16": {},
    "ivf_flat": {
        "nlist": "auto",
        "nprobe": "auto",
        "train_min": "auto",
        "max_train_per_list": 64,
        "retrain_growth": 4.0,
    },
    "ivf_pq": {
        "nlist": "auto",
        "nprobe": "auto",
        "train_min": "auto",
        "max_train_per_list": 64,
        "retrain_growth": 4.0,
        "m": "auto",
        "nbits": 8,
        "rerank": 4,
    },
    # 4-bit PQ codes scanned with SIMD (IndexIVFPQFastScan); their scores are coarse, so the top
    # ``rerank * max(k, 10)`` candidates are always re-scored from the kept float16 vectors
    "ivf_pq_fs": {
        "nlist": "auto",
        "nprobe": "auto",
        "train_min": "auto",
        "max_train_per_list": 64,
        "retrain_growth": 4.0,
        "m": "auto",
        "rerank": 2,
    },
    "hnsw": {"M": 32, "efConstruction": 80, "efSearch": 64, "tombstone_ratio": 0.1},
}
#: Options fixed when the index is built; changing them needs a rebuild (the stored value wins on open).
STRUCTURAL_KEYS = frozenset({"nlist", "train_min", "max_train_per_list", "m", "nbits", "M", "efConstruction", "seed"})


def _positive_int(key: str, value: Any, allow_auto: bool = False, minimum: int = 1) -> Any:
    if allow_auto and value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(
            f"store.index_options.{key}={value!r}: expected an integer >= {minimum}"
            + (" or 'auto'" if allow_auto else "")
        )
    return value


def _nonneg_float(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or not math.isfinite(value):
        raise ConfigError(f"store.index_options.{key}={value!r}: expected a number >= 0")
    return float(value)


@dataclass(frozen=True)
class IndexSpec:
    """A validated index type with its options (defaults filled in)."""

    kind: str
    dim: int
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, kind: str, dim: int, options: Mapping[str, Any] | None = None) -> IndexSpec:
        """Validate ``kind``/``options`` (raising :class:`ConfigError` naming the key) and fill defaults."""
        if kind not in INDEX_TYPES:
            raise ConfigError(f"store.index={kind!r}: expected one of {', '.join(INDEX_TYPES)}")
        allowed = {**_COMMON, **_DEFAULTS[kind]}
        opts = dict(allowed)
        for key, value in (options or {}).items():
            if key not in allowed:
                raise ConfigError(
                    f"store.index_options.{key} is not an option of index {kind!r}; valid: {', '.join(sorted(allowed))}"
                )
            opts[key] = value
        for key in ("nlist", "nprobe", "train_min", "m"):
            if key in opts:
                opts[key] = _positive_int(key, opts[key], allow_auto=True)
        for key in ("max_train_per_list", "M", "efConstruction", "efSearch"):
            if key in opts:
                opts[key] = _positive_int(key, opts[key])
        for key in ("merge_min", "seed", "query_threads", "batch_threads"):
            opts[key] = _positive_int(key, opts[key], minimum=0)
        opts["blas_min_batch"] = _positive_int("blas_min_batch", opts["blas_min_batch"])
        if "rerank" in opts:
            opts["rerank"] = _positive_int("rerank", opts["rerank"], minimum=0)
        if "nbits" in opts:
            opts["nbits"] = _positive_int("nbits", opts["nbits"])
            if opts["nbits"] > 16:
                raise ConfigError(f"store.index_options.nbits={opts['nbits']}: at most 16 bits per PQ code")
        for key in ("lock_timeout", "merge_ratio", "retrain_growth", "tombstone_ratio"):
            if key in opts:
                opts[key] = _nonneg_float(key, opts[key])
        spec = cls(kind=kind, dim=int(dim), options=opts)
        if kind == "ivf_pq_fs" and spec.options["rerank"] < 1:
            raise ConfigError(
                "store.index_options.rerank=0: ivf_pq_fs scores are 4-bit approximations and need "
                "re-ranking (rerank >= 1)"
            )
        if kind in PQ_TYPES and dim % spec.pq_m:
            raise ConfigError(f"store.index_options.m={spec.pq_m} must divide the vector dimension {dim}")
        return spec

    def with_runtime(self, overrides: Mapping[str, Any]) -> IndexSpec:
        """The same index with non-structural options (nprobe, efSearch, rerank, merge policy) overridden."""
        runtime = {k: v for k, v in overrides.items() if k not in STRUCTURAL_KEYS}
        return IndexSpec.create(self.kind, self.dim, {**self.options, **runtime})

    # -- derived properties ------------------------------------------------------------------------
    @property
    def raw_dtype(self) -> np.dtype:
        """Dtype of the kept raw vectors: float32 for the exact ``flat`` index, float16 otherwise."""
        return np.dtype(np.float32 if self.kind == "flat" else np.float16)

    @property
    def snapshot(self) -> bool:
        return self.kind in SNAPSHOT_TYPES

    @property
    def trained(self) -> bool:
        return self.kind in TRAINED_TYPES

    @property
    def pq_nbits(self) -> int:
        return FAST_SCAN_NBITS if self.kind == "ivf_pq_fs" else int(self.options.get("nbits", 8))

    @property
    def pq_m(self) -> int:
        m = self.options.get("m", "auto")
        if m != "auto":
            return int(m)
        # Largest divisor of dim that is <= dim / 8: e.g. 64 sub-quantizers (64 bytes/vector) at dim 512.
        target = max(1, self.dim // 8)
        return max(d for d in range(1, target + 1) if self.dim % d == 0)

    def nlist_for(self, n: int) -> int:
        """Number of inverted lists when training on a store of ``n`` vectors."""
        nlist = self.options.get("nlist", "auto")
        if nlist != "auto":
            return int(nlist)
        # ~2 sqrt(N) lists balances the centroid scan against the list scans and keeps k-means training
        # affordable on a CPU (at 1M vectors: 2000 lists trained on 128k points).
        return max(1, min(int(round(2 * math.sqrt(max(n, 1)))), n // 39))

    @property
    def train_min(self) -> int:
        """Vectors needed before training; below it searches stay exact."""
        tm = self.options.get("train_min", "auto")
        if tm != "auto":
            return int(tm)
        nlist = self.options.get("nlist", "auto")
        base = AUTO_TRAIN_MIN if nlist == "auto" else 39 * int(nlist)
        if self.kind in PQ_TYPES:
            base = max(base, 39 * 2**self.pq_nbits)
        return base

    def nprobe_for(self, nlist: int) -> int:
        nprobe = self.options.get("nprobe", "auto")
        if nprobe == "auto":
            nprobe = max(8, nlist // 16)
        return max(1, min(int(nprobe), nlist))


def _faiss() -> Any:
    return require("faiss")


def new_exact_index(kind: str, dim: int) -> Any:
    """An empty exact index with int64 ids: fp16 scalar-quantised for ``flat_fp16``, float32 otherwise."""
    faiss = _faiss()
    if kind == "flat_fp16":
        inner = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    else:
        inner = faiss.IndexFlatIP(dim)
    index = faiss.IndexIDMap2(inner)
    # Python owns `inner`; keep it alive as long as the wrapper.
    index.referenced_objects = [inner]
    return index


def new_ann_index(spec: IndexSpec, n: int) -> tuple[Any, dict[str, Any]]:
    """An empty (untrained) ANN index sized for ``n`` vectors, plus the facts to record (nlist, m)."""
    faiss = _faiss()
    opts = spec.options
    if spec.kind == "hnsw":
        index = faiss.index_factory(spec.dim, f"IDMap2,HNSW{opts['M']},Flat", faiss.METRIC_INNER_PRODUCT)
        faiss.downcast_index(index.index).hnsw.efConstruction = int(opts["efConstruction"])
        return index, {}
    nlist = spec.nlist_for(n)
    if spec.kind == "ivf_flat":
        desc = f"IVF{nlist},Flat"
        facts: dict[str, Any] = {"nlist": nlist}
    else:
        fs = "fs" if spec.kind == "ivf_pq_fs" else ""
        desc = f"IVF{nlist},PQ{spec.pq_m}x{spec.pq_nbits}{fs}"
        facts = {"nlist": nlist, "m": spec.pq_m, "nbits": spec.pq_nbits}
    index = faiss.index_factory(spec.dim, desc, faiss.METRIC_INNER_PRODUCT)
    if spec.kind == "ivf_pq":
        # Polysemous training (on by default) only serves Hamming pre-filtering, which is not used here, and
        # dominates training time (minutes for 20k x 512-d on 2 cores vs seconds without).
        faiss.downcast_index(index).do_polysemous_training = False
    return index, facts


def build_ann_index(
    spec: IndexSpec,
    ids: np.ndarray,
    fetch: Callable[[np.ndarray], np.ndarray],
    *,
    chunk: int = 65_536,
    progress: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """Train (if needed) and fill an ANN index with the vectors of ``ids`` (fetched in chunks).

    ``fetch(ids)`` returns the float32 vectors of a sorted id array. The training sample is a seeded random
    subset of at most ``max_train_per_list * nlist`` vectors, so memory stays bounded for any store size.
    """
    from tqdm.auto import tqdm

    ids = np.asarray(ids, dtype=np.int64)
    n = len(ids)
    index, facts = new_ann_index(spec, n)
    if spec.trained:
        nlist = facts["nlist"]
        cap = int(spec.options["max_train_per_list"]) * nlist
        if spec.kind in PQ_TYPES:
            cap = max(cap, 256 * 2**spec.pq_nbits)
        rng = np.random.default_rng(int(spec.options["seed"]))
        sample = np.sort(rng.choice(ids, size=min(n, cap), replace=False)) if n > cap else ids
        index.train(np.ascontiguousarray(fetch(sample), dtype=np.float32))
        facts["trained_on"] = int(len(sample))
    bar = tqdm(total=n, desc=f"building {spec.kind}", unit="vec", disable=not progress or n < chunk, leave=False)
    for start in range(0, n, chunk):
        part = ids[start : start + chunk]
        index.add_with_ids(np.ascontiguousarray(fetch(part), dtype=np.float32), part)
        bar.update(len(part))
    bar.close()
    return index, facts


def ivf_of(index: Any) -> Any | None:
    """The IVF layer of ``index`` (None for HNSW / flat)."""
    faiss = _faiss()
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def search_params(
    kind: str, *, nprobe: int | None = None, ef_search: int | None = None, selector: Any | None = None
) -> Any | None:
    """Per-call FAISS search parameters (thread-safe: the index object is never mutated to search)."""
    faiss = _faiss()
    if kind in TRAINED_TYPES:
        p = faiss.SearchParametersIVF()
        if nprobe is not None:
            p.nprobe = int(nprobe)
    elif kind == "hnsw":
        p = faiss.SearchParametersHNSW()
        if ef_search is not None:
            p.efSearch = int(ef_search)
    else:
        if selector is None:
            return None
        p = faiss.SearchParameters()
    if selector is not None:
        p.sel = selector
    return p


def exclusion_selector(ids: np.ndarray) -> Any:
    """A selector rejecting ``ids`` (deleted references still present in an HNSW graph)."""
    faiss = _faiss()
    batch = faiss.IDSelectorBatch(np.ascontiguousarray(ids, dtype=np.int64))
    sel = faiss.IDSelectorNot(batch)
    sel.referenced_objects = [batch]
    return sel


def zero_stored_vectors(index: Any, ids: Iterable[int]) -> int:
    """Overwrite with zeros the stored vectors of ``ids`` in an ``IDMap2`` over ``HNSW..,Flat``; returns how many.

    HNSW cannot delete nodes, so a removed reference stays in the graph as a tombstone; zeroing its vector
    keeps the embedding out of the snapshot written next. The node's links stay (they carry no image data).
    """
    faiss = _faiss()
    wanted = np.fromiter(ids, dtype=np.int64)
    if not len(wanted) or not index.ntotal:
        return 0
    xb = hnsw_vectors(index)
    rows = np.flatnonzero(np.isin(faiss.vector_to_array(index.id_map), wanted))
    xb[rows] = 0.0
    return int(len(rows))


def hnsw_vectors(index: Any) -> np.ndarray:
    """A writable view (no copy) of the vectors stored in an ``IDMap2`` over ``HNSW..,Flat``, in id_map order."""
    faiss = _faiss()
    storage = faiss.downcast_index(faiss.downcast_index(index.index).storage)
    return faiss.rev_swig_ptr(storage.get_xb(), index.ntotal * index.d).reshape(index.ntotal, index.d)


def exact_top1(
    queries: np.ndarray, ids: np.ndarray, fetch: Callable[[np.ndarray], np.ndarray], chunk: int = 65_536
) -> tuple[np.ndarray, np.ndarray]:
    """Exact best (score, id) of each query over the vectors of ``ids``, streamed in chunks."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    best = np.full(len(q), -np.inf, dtype=np.float32)
    best_id = np.full(len(q), -1, dtype=np.int64)
    for start in range(0, len(ids), chunk):
        part = ids[start : start + chunk]
        s = q @ np.ascontiguousarray(fetch(part), dtype=np.float32).T
        j = s.argmax(axis=1)
        sj = s[np.arange(len(q)), j]
        better = sj > best
        best[better] = sj[better]
        best_id[better] = part[j[better]]
    return best, best_id


#: Re-ranking depth floor: a top-1 query (what ``index tune`` measures) is re-ranked over as many candidates
#: as a top-10 one. Coarse codes mis-order the true neighbour and a few others at near-equal scores, so
#: ``rerank * 1`` candidates cap recall@1 whatever ``nprobe`` (0.76 with 2 candidates from 4-bit codes
#: at dim 64 in the tests).
RERANK_MIN_K = 10


def ann_search(
    index: Any,
    kind: str,
    q: np.ndarray,
    k: int,
    *,
    nprobe: int | None = None,
    ef_search: int | None = None,
    rerank: int = 0,
    fetch: Callable[[np.ndarray], np.ndarray] | None = None,
    selector: Any | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (scores, ids) from an ANN index; missing results are (-inf, -1).

    With ``rerank`` > 0 and a ``fetch`` of raw vectors, ``rerank * max(k, RERANK_MIN_K)`` candidates are
    re-scored exactly, so the returned scores are true cosines even for PQ codes (thresholds then mean the
    same on every index).
    """
    k_main = rerank * max(k, RERANK_MIN_K) if rerank and fetch is not None else k
    ef = max(int(ef_search), k_main) if ef_search is not None else None
    p = search_params(kind, nprobe=nprobe, ef_search=ef, selector=selector)
    scores, ids = index.search(q, k_main, params=p) if p is not None else index.search(q, k_main)
    scores = np.where(ids >= 0, scores, -np.inf).astype(np.float32)
    if not rerank or fetch is None:
        return scores, ids
    valid = ids >= 0
    if not valid.any():
        return scores[:, :k], ids[:, :k]
    vecs = fetch_rows(fetch, np.where(valid, ids, ids[valid][0]).ravel()).reshape(ids.shape[0], ids.shape[1], -1)
    exact = np.einsum("qd,qkd->qk", q, vecs)
    exact = np.where(valid, exact, -np.inf).astype(np.float32)
    order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(exact, order, 1), np.take_along_axis(ids, order, 1)


def fetch_rows(fetch: Callable[[np.ndarray], np.ndarray], ids: np.ndarray) -> np.ndarray:
    """``fetch`` of unsorted, possibly repeated ids: ``fetch`` wants sorted unique ones (it reads a sorted
    run of ``n`` ids spanning ``n`` rows as one slice, which repeats would fake)."""
    uniq, inverse = np.unique(ids, return_inverse=True)
    return fetch(uniq)[inverse.ravel()]


def threads_for(n_queries: int, options: Mapping[str, Any]) -> int:
    """FAISS threads for a search of ``n_queries``: ``query_threads`` for one, ``batch_threads`` for more (0 = all)."""
    n = int(options["query_threads"] if n_queries == 1 else options["batch_threads"])
    return n or os.cpu_count() or 1


@contextmanager
def faiss_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` OpenMP threads in FAISS, restoring the previous count after.

    The count is process-wide: two stores searching at once in different threads may see each other's
    setting, which changes only the speed, never the results.
    """
    faiss = _faiss()
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


#: floats in one score block of the BLAS path (64 MB): bounds memory whatever the batch and store sizes
_BLOCK_FLOATS = 1 << 24


def _flat_vectors(index: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """(ids, vectors) views of an ``IndexIDMap2`` over ``IndexFlatIP`` without copying vectors; None otherwise."""
    faiss = _faiss()
    inner = faiss.downcast_index(index.index) if hasattr(index, "id_map") else None
    if not isinstance(inner, faiss.IndexFlat) or not index.ntotal:
        return None
    xb = faiss.rev_swig_ptr(inner.get_xb(), index.ntotal * index.d).reshape(index.ntotal, index.d)
    return faiss.vector_to_array(index.id_map), xb


def blas_topk(q: np.ndarray, xb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` inner products (scores, row numbers) of ``q`` over ``xb`` by blocked matmul + argpartition."""
    rows = max(1, _BLOCK_FLOATS // max(1, len(q)))
    return topk_blocks(q, ((s, xb[s : s + rows]) for s in range(0, len(xb), rows)), k)


def topk_blocks(q: np.ndarray, blocks: Iterable[tuple[int, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` inner products (scores, row numbers) of ``q`` over row blocks ``(first row, vectors)``, merged."""
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_i = np.zeros((len(q), 0), np.int64)
    for start, block in blocks:
        s = q @ np.asarray(block, np.float32).T
        kk = min(k, s.shape[1])
        part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
        best_s = np.concatenate([best_s, np.take_along_axis(s, part, 1)], axis=1)
        best_i = np.concatenate([best_i, part + start], axis=1)
        keep = np.argsort(-best_s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(best_s, keep, 1), np.take_along_axis(best_i, keep, 1)
    return best_s, best_i


def exact_search(index: Any, q: np.ndarray, k: int, blas_min_batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` (scores, ids) of an exact index; large float32 batches use numpy's BLAS.

    For a batch, FAISS's flat search is a matmul too, but through the BLAS bundled in the faiss-cpu wheel,
    which ``benchmarks/search_threads.py`` measures slower than numpy's here; single queries stay in FAISS.
    """
    flat = _flat_vectors(index) if len(q) >= blas_min_batch else None
    if flat is None:
        return index.search(q, k)  # type: ignore[no-any-return]
    ids, xb = flat
    scores, rows = blas_topk(q, xb, k)
    return scores, ids[rows]
