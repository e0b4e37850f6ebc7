"""Searching a FAISS store's in-memory state: which search parameters apply, the ANN index and the exact
buffer searched and their results merged, and the score bound that catches a damaged vector.

PQ indexes re-score their best candidates from the raw file, which stays memory-mapped: the rows read are
file-backed page cache, not process memory, so ``ivf_pq_fs`` (32 bytes per 512-d vector) needs ~0.4 GB
of anonymous memory for 10M references.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import IncompatibleStoreError, StoreDamagedError
from . import _faiss_index as fx
from . import _integrity as ix
from ._faiss_reader import State
from ._faiss_vectors import fetcher

SEARCH_KEYS = ("nprobe", "efSearch", "rerank")


@dataclass(frozen=True)
class TuningView:
    """What tuning needs of a FAISS store: its ANN index, the ids in it, their raw vectors, a search."""

    index: Any  # the built ANN index; None while searches are exact
    ids: np.ndarray
    fetch: Callable[[np.ndarray], np.ndarray]
    params: dict[str, Any]  # the search parameters in effect
    search: Callable[[np.ndarray, int, dict[str, Any]], tuple[np.ndarray, np.ndarray]]


def check_vectors(vectors: np.ndarray, dim: int) -> np.ndarray:
    """``vectors`` as a contiguous float32 ``N x dim`` array; refuses another dimension and non-finite values."""
    v = np.asarray(vectors, dtype=np.float32)
    if v.ndim == 1:
        v = v[None]
    if v.ndim != 2 or v.shape[1] != dim:
        raise IncompatibleStoreError(
            f"vectors of shape {tuple(np.shape(vectors))} do not match the store's dimension {dim}"
        )
    if not np.isfinite(v).all():
        raise ValueError("vectors contain NaN or infinity")
    return np.ascontiguousarray(v)


class Searcher:
    """Searches for one store handle: ``explicit`` holds the search options this handle was opened with,
    which win over values tuned and saved in the store."""

    def __init__(self, location: Path, spec: fx.IndexSpec, explicit: set[str]) -> None:
        self.location = location
        self.spec = spec
        self.explicit = explicit

    def effective(self, tuned: dict[str, Any], nlist: int | None) -> dict[str, Any]:
        """nprobe / efSearch / rerank: explicit option > tuned value saved in the store > default."""
        opts = self.spec.options
        out: dict[str, Any] = {}
        if self.spec.trained and nlist is None:
            out["nprobe"] = opts["nprobe"]  # not trained yet: the setting applies once it is
        elif self.spec.trained:
            assert nlist is not None
            if "nprobe" in self.explicit or "nprobe" not in tuned:
                out["nprobe"] = self.spec.nprobe_for(nlist)
            else:
                out["nprobe"] = max(1, min(int(tuned["nprobe"]), nlist))
        if self.spec.kind == "hnsw":
            use_tuned = "efSearch" in tuned and "efSearch" not in self.explicit
            out["efSearch"] = int(tuned["efSearch"] if use_tuned else opts["efSearch"])
        if "rerank" in opts:
            use_tuned = "rerank" in tuned and "rerank" not in self.explicit
            out["rerank"] = int(tuned["rerank"] if use_tuned else opts["rerank"])
        return out

    def params_of(self, state: State) -> dict[str, Any]:
        ivf = fx.ivf_of(state.main) if state.main is not None and self.spec.trained else None
        return self.effective(state.search_params, int(ivf.nlist) if ivf is not None else None)

    def search_main(self, state: State, q: np.ndarray, k: int, params: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """Search the ANN index; with ``rerank`` re-score ``rerank * max(k, 10)`` candidates from the raw vectors."""
        return fx.ann_search(
            state.main,
            self.spec.kind,
            q,
            k,
            nprobe=params.get("nprobe"),
            ef_search=params.get("efSearch"),
            rerank=params.get("rerank", 0),
            fetch=fetcher(state.raw) if state.raw is not None else None,
            selector=state.selector,
        )

    def search(
        self, state: State, q: np.ndarray, k: int, params: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, ids) over the ANN index and the exact buffer, merged; missing = (-inf, -1)."""
        params = self.params_of(state) if params is None else params
        parts: list[tuple[np.ndarray, np.ndarray]] = []
        with fx.faiss_threads(fx.threads_for(len(q), self.spec.options)):
            if state.main is not None and state.main.ntotal:
                parts.append(self.search_main(state, q, k, params))
            if state.buffer.ntotal:
                k_buf = min(k, state.buffer.ntotal)
                parts.append(fx.exact_search(state.buffer, q, k_buf, int(self.spec.options["blas_min_batch"])))
        if not parts:
            return np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)
        scores = np.concatenate([p[0] for p in parts], axis=1).astype(np.float32)
        ids = np.concatenate([p[1] for p in parts], axis=1).astype(np.int64)
        scores = np.where(ids >= 0, scores, -np.inf)
        # PQ scores without re-ranking are approximations that may overshoot: clipped, not refused
        over = ix.over_bound(scores, q, clip_only=self.spec.kind in fx.PQ_TYPES and not params.get("rerank"))
        if over is not None:
            found = f"reference {int(ids[over[0]])} scores a cosine of {over[1]:.4g}: its vector is damaged"
            raise StoreDamagedError(ix.damage_message(self.location, [found], reading=True))
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)
