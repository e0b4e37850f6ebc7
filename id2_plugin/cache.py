"""Opt-in on-disk latent cache: encode each distinct normalised image once per encoder, across runs.

A cached latent decodes back into a near-copy of its image, so nothing is cached unless the user names a
folder (``--cache DIR`` or config ``cache.dir``); ``id2-plugin cache purge`` deletes it again.

Latents (not embeddings) are cached so that changing W never invalidates the cache. The key is the sha256
of the normalised ``S x S x 3`` uint8 pixels, so a path, its bytes or an attacked array that decode to the
same pixels share one entry. Entries are written atomically (temp file + rename): concurrent writers are
safe and an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .embedders.base import LatentEncoder
from .media import MediaLike


def legacy_cache_dir() -> Path:
    """Where releases before the cache became opt-in wrote latents unasked (``cache purge`` cleans it)."""
    env = os.environ.get("ID2_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "id2_plugin"


def latent_cache(encoder: LatentEncoder | None, root: str | os.PathLike | None) -> LatentCache | None:
    """A cache for ``encoder`` under ``root``, or None when caching was not asked for (the default)."""
    if encoder is None or root is None:
        return None
    return LatentCache(encoder, root)


def purge(root: str | os.PathLike) -> int:
    """Delete the latent folder under ``root``; returns the number of cached latents removed."""
    latents = Path(root) / "latents"
    if not latents.is_dir():
        return 0
    n = sum(1 for _ in latents.rglob("*.npy"))
    shutil.rmtree(latents)
    with contextlib.suppress(OSError):
        Path(root).rmdir()  # only when nothing else lives there
    return n


class LatentCache:
    """Latent cache for one encoder identity under ``root`` (a folder the user chose)."""

    def __init__(self, encoder: LatentEncoder, root: str | os.PathLike, dtype: str = "float16") -> None:
        self.encoder = encoder
        safe = re.sub(r"[^A-Za-z0-9_.@-]+", "_", encoder.identity)
        self.dir = Path(root) / "latents" / safe
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dtype = np.dtype(dtype)

    @staticmethod
    def key(image: np.ndarray) -> str:
        return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.npy"

    def get(self, key: str) -> np.ndarray | None:
        p = self._path(key)
        try:
            return np.load(p).astype(np.float32)
        except (FileNotFoundError, ValueError, OSError):
            return None

    def put(self, key: str, latent: np.ndarray) -> None:
        p = self._path(key)
        p.parent.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=p.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.save(f, latent.astype(self.dtype))
        os.replace(tmp, p)

    def encode_arrays(self, images: np.ndarray) -> np.ndarray:
        """Latents of normalised images, computing (in batches) only those not cached yet."""
        keys = [self.key(im) for im in images]
        out = np.empty((len(images), self.encoder.latent_dim), np.float32)
        missing = []
        for i, k in enumerate(keys):
            z = self.get(k)
            if z is None:
                missing.append(i)
            else:
                out[i] = z
        if missing:
            z = self.encoder.encode_arrays(images[missing])
            for i, zi in zip(missing, z):
                self.put(keys[i], zi)
                out[i] = zi.astype(self.dtype).astype(np.float32)  # identical values cached or not
        return out

    def encode(self, sources: Sequence[MediaLike], batch: int = 64, progress: bool | str = False) -> np.ndarray:
        """Normalise and encode ``sources`` (raises :class:`MediaError` on bad media), in chunks of ``batch``."""
        from ._progress import progress_bar

        out = np.empty((len(sources), self.encoder.latent_dim), np.float32)
        with progress_bar(progress, len(sources), "encoding") as bar:
            for s in range(0, len(sources), batch):
                chunk = sources[s : s + batch]
                out[s : s + len(chunk)] = self.encode_arrays(np.stack([self.encoder.normalise(x) for x in chunk]))
                bar.update(len(chunk))
        return out
