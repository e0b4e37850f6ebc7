"""Thorn ``perception`` hashers backed by ID2 embeddings (images and frame-wise video).

Drop them wherever perception takes a hasher, including its benchmarking::

    from perception.benchmarking import BenchmarkImageDataset
    from perception.hashers import PDQHash, PHash
    from id2_plugin.adapters.perception import ID2Hasher

    transforms = dataset.transform({"noop": lambda image: image, ...}, storage_dir="bench")
    hashes = transforms.compute_hashes({"id2": ID2Hasher(), "pdq": PDQHash(), "phash": PHash()})
    print(hashes.compute_threshold_recall(precision_threshold=99.9))

The hash is the L2-normalised embedding as float32 (perception's string formats are base64 / hex of
float32): ``distance_metric="cosine"`` makes perception's distance ``1 - cosine``, the same scale as the
ThreatExchange adapter. ``hash_length`` is the embedder's dimension (512 with the shipped W, 32,768 for
the raw TAEF2 latent); reading it builds the embedder.

The model loads on first use, once per process (:func:`id2_plugin.adapters._shared.get_embedder`), and
forward passes are serialised, so ``compute_parallel``'s threads only parallelise decoding. A hasher
pickled into another process (perception's video benchmarks use a process pool) rebuilds its embedder
there from the same configuration.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from perception.hashers import FramewiseHasher, ImageHasher

from id2_plugin.config import EmbedderConfig

from ._shared import SerialEmbedder, get_embedder

__all__ = ["ID2FramewiseHasher", "ID2Hasher"]


class ID2Hasher(ImageHasher):
    """perception ``ImageHasher`` computing the ID2 embedding of an RGB image.

    ``config`` picks the embedder (default: the id2 config's ``embedder`` section, i.e. TAEF2 + the
    shipped W); ``embedder`` passes a ready :class:`~id2_plugin.Embedder` instead (not carried across
    processes: a pickled copy falls back to ``config``).
    """

    distance_metric = "cosine"
    dtype = "float32"
    returns_multiple = False
    allow_parallel = True

    def __init__(self, config: EmbedderConfig | None = None, *, embedder: Any = None) -> None:
        self.config = config
        self._embedder: SerialEmbedder | None = None
        if embedder is not None:
            self._embedder = embedder if isinstance(embedder, SerialEmbedder) else SerialEmbedder(embedder)

    @property
    def embedder(self) -> SerialEmbedder:
        if self._embedder is None:
            self._embedder = get_embedder(self.config)
        return self._embedder

    @property  # type: ignore[override]
    def hash_length(self) -> int:  # perception reads it as an attribute
        return self.embedder.dim

    def _compute(self, image: np.ndarray) -> np.ndarray:
        """``H x W x 3`` RGB uint8 (perception's convention) -> unit float32 vector."""
        return self.embedder.embed_one(image).astype(np.float32)

    def __getstate__(self) -> dict[str, Any]:
        # The model is not picklable (and must not be shipped between processes): rebuild it there.
        return {"config": self.config}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.config = state["config"]
        self._embedder = None


class ID2FramewiseHasher(FramewiseHasher):
    """Frame-wise video hasher: one ID2 embedding per sampled frame, skipping near-identical frames.

    Frames are read at ``frames_per_second``; a frame is kept when its cosine distance to the last kept
    frame (see :meth:`process_frame`) exceeds ``interframe_threshold`` (0.05 ~ cosine 0.95: a static shot
    gives one hash, a cut or visible motion a new one). Returns several hashes per video (``returns_multiple``).
    """

    def __init__(
        self,
        frame_hasher: ID2Hasher | None = None,
        interframe_threshold: float = 0.05,
        frames_per_second: int = 1,
        quality_threshold: float | None = None,
    ) -> None:
        # Not FramewiseHasher.__init__: it copies hash_length eagerly, which would load the model here.
        self.frame_hasher = frame_hasher or ID2Hasher()
        self.frames_per_second = frames_per_second
        self.distance_metric = self.frame_hasher.distance_metric
        self.dtype = self.frame_hasher.dtype
        if not 0.0 <= interframe_threshold <= 2.0:
            raise ValueError(f"interframe_threshold={interframe_threshold} is a cosine distance in [0, 2]")
        self.interframe_threshold = interframe_threshold
        self.quality_threshold = quality_threshold

    @property  # type: ignore[override]
    def hash_length(self) -> int:
        return self.frame_hasher.hash_length

    def process_frame(
        self,
        frame: np.ndarray,
        frame_index: int | None,
        frame_timestamp: float | None,
        state: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Keep ``frame``'s hash if it is farther than ``interframe_threshold`` from the last KEPT hash.

        perception's ``FramewiseHasher`` compares every frame with the first one of the video only, so
        the second half of a two-shot video yields one hash per sampled frame; comparing with the last
        kept frame gives one hash per shot (and a new one when a slow drift has accumulated).
        """
        if self.quality_threshold is None:
            current = self.frame_hasher.compute(frame, hash_format="vector")
        else:
            current, quality = self.frame_hasher.compute_with_quality(frame, hash_format="vector")
            if quality < self.quality_threshold:
                return state or {"previous": None, "hashes": []}
        if state is None or state["previous"] is None:
            return {"previous": current, "hashes": [current]}
        if self.frame_hasher.compute_distance(current, state["previous"]) > self.interframe_threshold:
            state["hashes"].append(current)
            state["previous"] = current
        return state
