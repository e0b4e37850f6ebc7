"""The scores a threshold calibration looks at: queries against their origins, each negative's best match.

Negatives are scored against the calibration's references or, to calibrate for a deployment, against an
existing reference store (:func:`store_best_matches`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError
from .evaluate import Method, embed_images
from .stores.base import ReferenceStore

__all__ = [
    "CalibrationScores",
    "calibration_scores",
    "score_calibration_set",
    "store_best_matches",
]


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
