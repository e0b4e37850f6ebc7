"""What every host adapter shares: one lazily built embedder per process, and the hash-string codec.

Hosts call adapters from many threads (perception's ``compute_parallel``, a web server's thread pool,
HMA workers). The model is built once, on first use, under a lock; forward passes are serialised by
:class:`SerialEmbedder` while media decoding, the cheap and parallel part, runs outside the lock. On a
CPU this costs nothing (torch already uses every core for one forward pass) and keeps memory bounded.

``encode_vector`` / ``decode_vector`` are the version-1 hash strings (little-endian float16, hex encoded:
``4 * dim`` characters, no embedder identity). The ThreatExchange adapter now writes versioned strings
(:mod:`id2_plugin.adapters.threatexchange.signal_format`) and only reads these to refuse or explicitly
upgrade them.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from id2_plugin.config import Config, EmbedderConfig, load_config
from id2_plugin.media import MediaLike, MediaLimits
from id2_plugin.samples import synthetic_images

if TYPE_CHECKING:
    from id2_plugin.embedders.base import ImageEmbedder as Embedder

__all__ = [
    "SerialEmbedder",
    "check_same_dim",
    "decode_vector",
    "encode_vector",
    "get_config",
    "get_embedder",
    "reset",
    "synthetic_images",
]

_HEX = re.compile(r"^[0-9a-f]+$")
#: A decoded hash must have unit norm within this tolerance (float16 rounding moves it by ~1e-4).
_NORM_TOLERANCE = 0.02
_MIN_DIM = 8

_lock = threading.Lock()
_config: Config | None = None
_embedders: dict[tuple[EmbedderConfig, MediaLimits], SerialEmbedder] = {}
_build_locks: dict[Any, threading.Lock] = {}


class SerialEmbedder:
    """An :class:`~id2_plugin.Embedder` whose forward passes are serialised by a lock (thread-safe).

    Exposes the attributes :func:`id2_plugin.video.embed_keyframes` and the adapters use: ``normalise``,
    ``input_size``, ``dim``, ``identity``, ``signals``, ``embed_arrays``, plus :meth:`embed` and :meth:`embed_one`.
    """

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder
        self._model_lock = threading.Lock()

    def normalise(self, source: MediaLike) -> np.ndarray:
        return self.embedder.normalise(source)

    @property
    def input_size(self) -> int:
        return self.embedder.input_size

    @property
    def signals(self) -> dict[str, tuple[int, int, float]]:
        return self.embedder.signals

    @property
    def dim(self) -> int:
        return self.embedder.dim

    @functools.cached_property
    def identity(self) -> str:
        # Once per embedder: identities hash the weights (~0.4 s for the shipped 100 MB W) and the
        # ThreatExchange adapter stamps it into every hash it makes.
        return self.embedder.identity

    def embed_arrays(self, images: np.ndarray) -> np.ndarray:
        """Embed normalised ``N x S x S x 3`` uint8 arrays (one forward pass at a time per process)."""
        with self._model_lock:
            return self.embedder.embed_arrays(images)

    def embed(self, sources: Sequence[MediaLike]) -> np.ndarray:
        """Decode ``sources`` (raises :class:`~id2_plugin.MediaError`) then embed them: ``N x dim`` float32."""
        if not len(sources):
            return np.zeros((0, self.dim), np.float32)
        return self.embed_arrays(np.stack([self.embedder.normalise(s) for s in sources]))

    def embed_one(self, source: MediaLike) -> np.ndarray:
        return self.embed([source])[0]


def get_config() -> Config:
    """The effective id2 configuration (``$ID2_CONFIG``, else ``./id2.yaml``, else defaults), read once."""
    global _config
    with _lock:
        if _config is None:
            _config = load_config()
        return _config


def get_embedder(cfg: EmbedderConfig | None = None, limits: MediaLimits | None = None) -> SerialEmbedder:
    """The process-wide embedder for ``cfg`` (default: the ``embedder`` section of :func:`get_config`).

    Built on first call (the model loads then, never at import) and cached: later calls with the same
    configuration return the same object, from any thread.
    """
    if cfg is None:
        full = get_config()
        cfg = full.embedder
        limits = limits or MediaLimits.from_config(full.media)
    limits = limits or MediaLimits()
    key = (cfg, limits)
    with _lock:
        found = _embedders.get(key)
    if found is not None:
        return found
    # Build outside the global lock so a slow load does not block unrelated configurations; a second
    # thread racing for the same key waits on the per-key build below instead of loading twice.
    with _build_lock(key):
        with _lock:
            found = _embedders.get(key)
        if found is None:
            from id2_plugin.assembly import build_embedder

            found = SerialEmbedder(build_embedder(cfg, limits))
            with _lock:
                _embedders[key] = found
    return found


def _build_lock(key: Any) -> threading.Lock:
    with _lock:
        return _build_locks.setdefault(key, threading.Lock())


def reset() -> None:
    """Forget the cached configuration and embedders (tests, or after changing ``$ID2_CONFIG``)."""
    global _config
    with _lock:
        _config = None
        _embedders.clear()
        _build_locks.clear()


def encode_vector(vector: np.ndarray) -> str:
    """Unit vector -> hash string (little-endian float16, lowercase hex)."""
    v = np.asarray(vector, dtype=np.float32).reshape(-1)
    if not np.isfinite(v).all():
        raise ValueError("embedding contains NaN or infinity")
    return v.astype("<f2").tobytes().hex()


def decode_vector(signal: str) -> np.ndarray:
    """Hash string -> L2-normalised float32 vector; :class:`ValueError` if it is not a valid hash."""
    s = signal.strip().lower()
    if not s:
        raise ValueError("empty hash")
    if not _HEX.match(s):
        raise ValueError("hash must be hexadecimal (little-endian float16 values)")
    if len(s) % 4:
        raise ValueError(f"hash length {len(s)} is not a multiple of 4 hex digits (one float16 each)")
    dim = len(s) // 4
    if dim < _MIN_DIM:
        raise ValueError(f"hash has {dim} values; an id2 embedding has at least {_MIN_DIM}")
    v = np.frombuffer(bytes.fromhex(s), dtype="<f2").astype(np.float32)
    if not np.isfinite(v).all():
        raise ValueError("hash contains NaN or infinity")
    norm = float(np.linalg.norm(v))
    if abs(norm - 1.0) > _NORM_TOLERANCE:
        raise ValueError(f"hash is not a unit vector (norm {norm:.4f}); it was not produced by id2-plugin")
    return v / norm


def check_same_dim(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(
            f"hashes of different dimensions ({a.shape[-1]} vs {b.shape[-1]}) were made by different "
            "embedders (W or input size) and cannot be compared"
        )
