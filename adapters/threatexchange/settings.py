"""The adapter's process-wide state: ``configure()`` overrides, the embedder, the match threshold, the thread cap.

**Model.** Nothing is loaded at import. The embedder (:func:`id2_plugin.assembly.build_embedder` on the
config's ``embedder`` section) is built on first use, once per process, or by
:func:`~id2_plugin.adapters.threatexchange.warmup.warm_up` (call it from the host's start-up hook).
``configure(threads=N)`` or ``$ID2_THREADS`` caps torch / ONNX Runtime threads.

**Threshold.** A match is ``distance <= 1 - cosine_threshold``, the cosine threshold being, in this order:
``configure(cosine_threshold=...)``, else ``match.threshold`` of the config file given to
``configure(config=...)``, ``$ID2_CONFIG`` or ``./id2.yaml`` (relative to the worker's cwd; re-read when the
file changes), else the shipped calibration. It is read at every match, never frozen into a stored index.

The photo and video signal types share all of it: a host configures one and both follow.
"""

from __future__ import annotations

import logging
import os
import pathlib
import threading
import typing as t

import numpy as np

from id2_plugin.assembly import cosine_threshold
from id2_plugin.config import Config, MatchConfig, default_config_path, load_config
from id2_plugin.errors import MissingExtraError
from id2_plugin.extras import require

from .._shared import SerialEmbedder, get_embedder, synthetic_images

__all__ = [
    "THREADS_ENV",
    "clear_overrides",
    "cosine_threshold_in_use",
    "distance_threshold_in_use",
    "embedder_in_use",
    "example_vectors",
    "set_overrides",
]

logger = logging.getLogger(__name__)

#: Environment variable capping the threads torch and ONNX Runtime use per process.
THREADS_ENV = "ID2_THREADS"


class _Settings:
    """Process-wide overrides set by :func:`set_overrides` (else the id2 config is used)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.embedder: SerialEmbedder | None = None
        self.cosine_threshold: float | None = None
        self.config_path: pathlib.Path | None = None
        #: the embedder section of ``config_path``, read once (the threshold is re-read, not this)
        self.config: Config | None = None
        self.threads: int | None = None
        self.examples: dict[str, list[np.ndarray]] = {}
        #: (resolved config path, mtime_ns) -> its match.threshold, so an edited file is picked up
        self.file_threshold: tuple[tuple[str, int], float] | None = None


_settings = _Settings()


def set_overrides(
    *,
    embedder: t.Any = None,
    cosine_threshold: float | None = None,
    config: str | os.PathLike[str] | None = None,
    threads: int | None = None,
) -> None:
    """What ``configure()`` of either signal type sets; ``None`` leaves a setting unchanged."""
    if cosine_threshold is not None and not -1.0 <= cosine_threshold <= 1.0:
        raise ValueError(f"cosine_threshold={cosine_threshold} must lie in [-1, 1]")
    if threads is not None and threads < 1:
        raise ValueError(f"threads={threads} must be >= 1")
    path = pathlib.Path(config).resolve() if config is not None else None
    loaded = load_config(path) if path is not None else None  # fails now, in the host's start-up
    with _settings.lock:
        if embedder is not None:
            _settings.embedder = embedder if isinstance(embedder, SerialEmbedder) else SerialEmbedder(embedder)
        if cosine_threshold is not None:
            _settings.cosine_threshold = float(cosine_threshold)
        if loaded is not None:
            _settings.config_path, _settings.config = path, loaded
        if threads is not None:
            _settings.threads = int(threads)


def clear_overrides() -> None:
    """Drop every override and the cached examples (back to the id2 config)."""
    with _settings.lock:
        _settings.embedder = None
        _settings.cosine_threshold = None
        _settings.config_path = None
        _settings.config = None
        _settings.threads = None
        _settings.examples.clear()
        _settings.file_threshold = None


def embedder_in_use() -> SerialEmbedder:
    """The configured embedder, else the config's, built on first call after applying the thread cap."""
    with _settings.lock:
        configured, cfg = _settings.embedder, _settings.config
    if configured is not None:
        return configured
    _apply_thread_cap()
    if cfg is None:
        return get_embedder()
    return get_embedder(cfg.embedder, cfg.media.limits())


def cosine_threshold_in_use() -> tuple[float, str]:
    """``(cosine threshold, where it came from)``: configure(), else the config file, else the default."""
    with _settings.lock:
        if _settings.cosine_threshold is not None:
            return _settings.cosine_threshold, "configure()"
        path = _settings.config_path
    if path is None:
        found = default_config_path()
        if found is None:
            return cosine_threshold(MatchConfig(), embedder_in_use()), "built-in default (the shipped calibration)"
        path = found.resolve()
    return _file_threshold(path), str(path)


def distance_threshold_in_use() -> float:
    """Largest ``1 - cosine`` distance that is a match, read now."""
    return 1.0 - cosine_threshold_in_use()[0]


def _file_threshold(path: pathlib.Path) -> float:
    """``match.threshold`` of ``path``, parsed again only when its mtime changed (a stat per match)."""
    # A missing file gets a key of its own; load_config then raises a ConfigError naming it.
    key = (str(path), path.stat().st_mtime_ns if path.exists() else -1)
    with _settings.lock:
        cached = _settings.file_threshold
    if cached is None or cached[0] != key:
        value = cosine_threshold(load_config(path).match, embedder_in_use())
        logger.info("id2: match threshold %.4f (cosine) from %s", value, path)
        cached = (key, value)
        with _settings.lock:
            _settings.file_threshold = cached
    return cached[1]


def _apply_thread_cap() -> None:
    """Cap torch (and, through ``$ID2_THREADS``, ONNX Runtime) threads before a model is built."""
    with _settings.lock:
        threads = _settings.threads
    if threads is None:
        env = os.environ.get(THREADS_ENV)
        if not env:
            return
        if not env.isdigit() or int(env) < 1:
            raise ValueError(f"${THREADS_ENV}={env!r} must be a positive integer")
        threads = int(env)
    os.environ[THREADS_ENV] = str(threads)  # read by the SSCD session builder
    try:
        torch = require("torch")
    except MissingExtraError:  # an SSCD-only install: the environment variable is all there is to cap
        return
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def example_vectors(emb: SerialEmbedder) -> list[np.ndarray]:
    """Embeddings of three synthetic pictures, computed once per process and embedder (both signals use them)."""
    with _settings.lock:
        found = _settings.examples.get(emb.identity)
    if found is None:
        size = emb.input_size
        found = list(emb.embed_arrays(np.stack([emb.normalise(img) for img in synthetic_images(3, size)])))
        with _settings.lock:
            _settings.examples[emb.identity] = found
    return list(found)
