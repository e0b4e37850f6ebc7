"""Each signal's cosine matrix of a multi-signal embedder, and the query windows' evidence.

What fitting and evaluating a decision model look at: the same per-signal cosines the identify path reads
from a fused vector's slices, and the best window cosine of the window signal (SSCD) per (query,
reference), for the queries whose windows are searched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ._progress import progress_bar
from .decision import WINDOW_SIGNAL
from .embedders.base import ImageEmbedder
from .framing import query_windows


@dataclass(frozen=True)
class SignalScores:
    """``Q x R`` cosines per signal, the best window cosine (NaN where not searched), and the fused weights."""

    sims: dict[str, np.ndarray]
    window: np.ndarray | None
    weights: dict[str, float]

    def fused(self) -> np.ndarray:
        """The store's (fused) cosine: the weighted mean of the signals' cosines."""
        return sum(w * self.sims[n] for n, w in self.weights.items())  # type: ignore[return-value]

    def rows(self, index: np.ndarray) -> SignalScores:
        """These scores for a subset of the queries."""
        return SignalScores(
            {n: s[index] for n, s in self.sims.items()},
            None if self.window is None else self.window[index],
            self.weights,
        )


def slice_cosines(embedder: ImageEmbedder, q: np.ndarray, r: np.ndarray) -> dict[str, np.ndarray]:
    """Each signal's cosines between the rows of ``q`` and ``r`` (vectors of ``embedder``)."""
    return {
        name: np.asarray(q[:, a:b], np.float32) @ np.asarray(r[:, a:b], np.float32).T / np.float32(max(w, 1e-12))
        for name, (a, b, w) in embedder.signals.items()
    }


def window_cosines(
    embedder: ImageEmbedder,
    images: Sequence[np.ndarray],
    vectors: np.ndarray,
    references: np.ndarray,
    searched: np.ndarray,
    progress: bool | str = False,
) -> np.ndarray:
    """``Q x R`` best cosine of the window signal over each query's windows (NaN for queries not ``searched``)."""
    out = np.full((len(images), len(references)), np.nan, np.float32)
    todo = np.flatnonzero(searched)
    with progress_bar(progress, len(todo), "query windows") as bar:
        for i in todo:
            _, crops = query_windows(np.asarray(images[i]))
            out[i] = best_window_cosine(embedder, embedder.embed_windows(crops, vectors[i]), references)
            bar.update(1)
    return out


def best_window_cosine(embedder: ImageEmbedder, windows: np.ndarray, references: np.ndarray) -> np.ndarray:
    """Per reference, the best cosine of the window signal over one query's window vectors
    (``W x d`` and ``R x d`` -> ``R``): the windows' evidence of fitting and evaluation."""
    a, b, w = embedder.signals[WINDOW_SIGNAL]
    cos = np.asarray(windows[:, a:b], np.float32) @ np.asarray(references[:, a:b], np.float32).T
    return cos.max(axis=0) / np.float32(w)  # type: ignore[no-any-return]


def signal_scores(
    embedder: ImageEmbedder,
    queries: Sequence[np.ndarray],
    query_vectors: np.ndarray,
    reference_vectors: np.ndarray,
    searched: np.ndarray | None = None,
    progress: bool | str = False,
) -> SignalScores:
    """The per-signal scores of the queries against the references (both embedded by ``embedder``), with
    the windows of the ``searched`` queries (None: no windows)."""
    sims = slice_cosines(embedder, query_vectors, reference_vectors)
    window = None
    if searched is not None and WINDOW_SIGNAL in embedder.signals:
        window = window_cosines(embedder, queries, query_vectors, reference_vectors, searched, progress)
    return SignalScores(sims, window, {n: w for n, (_, _, w) in embedder.signals.items()})
