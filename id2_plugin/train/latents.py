"""Encode a training set's images once into a memory-mapped latent matrix, resumably.

The matrix lives in ``<cache_dir>/<key>.npy`` (``N x latent_dim`` float16, opened with ``np.load(mmap_mode)``)
next to ``<key>.status.npy`` (per row: 0 = to do, 1 = encoded, 2 = unreadable) and ``<key>.json`` (encoder
identity and the image list). ``key`` hashes the encoder identity and the ordered image list, so a changed
manifest gets a new matrix. Rows are flushed chunk by chunk: an interrupted run continues where it stopped.
When a :class:`~id2_plugin.cache.LatentCache` is given, rows are filled through it, so images shared with
other runs (or added to a manifest later) are not encoded again.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..cache import LatentCache
from ..embedders.base import LatentEncoder
from ..errors import MediaError

TODO, DONE, FAILED = 0, 1, 2


def matrix_key(identity: str, paths: Sequence[Path]) -> str:
    h = hashlib.sha256(identity.encode())
    for p in paths:
        h.update(b"\0" + str(Path(p).resolve()).encode())
    return h.hexdigest()[:20]


def _save_status(path: Path, status: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, status)
    os.replace(tmp, path)


def cache_latents(
    paths: Sequence[str | os.PathLike],
    encoder: LatentEncoder,
    cache_dir: str | os.PathLike,
    *,
    latent_cache: LatentCache | None = None,
    chunk: int = 32,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Latents of ``paths`` as a read-only memory map, and a boolean mask of the readable rows.

    Unreadable images are reported on stderr once, marked, and their rows left at zero (mask False).
    """
    from numpy.lib.format import open_memmap

    paths = [Path(p).resolve() for p in paths]
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = matrix_key(encoder.identity, paths)
    mat_path, status_path, meta_path = (
        cache_dir / f"{key}.npy",
        cache_dir / f"{key}.status.npy",
        cache_dir / f"{key}.json",
    )
    n, d = len(paths), encoder.latent_dim
    status = np.load(status_path) if status_path.is_file() and mat_path.is_file() else None
    if status is None or status.shape != (n,):
        mat = open_memmap(mat_path, mode="w+", dtype=np.float16, shape=(n, d))
        del mat
        status = np.zeros(n, np.uint8)
        _save_status(status_path, status)
        meta_path.write_text(json.dumps({"encoder": encoder.identity, "paths": [str(p) for p in paths]}))
    todo = np.flatnonzero(status == TODO)
    if len(todo):
        from tqdm import tqdm

        mat = np.load(mat_path, mmap_mode="r+")
        bar = tqdm(total=n, initial=n - len(todo), desc="caching latents", unit="img", disable=not progress)
        for start in range(0, len(todo), chunk):
            idx = todo[start : start + chunk]
            arrays, ok = [], []
            for i in idx:
                try:
                    arrays.append(encoder.normalise(paths[i]))
                    ok.append(i)
                except MediaError as exc:
                    status[i] = FAILED
                    bar.write(f"skipped unreadable image {exc}", file=sys.stderr)
            if ok:
                stack = np.stack(arrays)
                z = latent_cache.encode_arrays(stack) if latent_cache is not None else encoder.encode_arrays(stack)
                mat[ok] = z.astype(np.float16)
                status[ok] = DONE
            mat.flush()
            _save_status(status_path, status)  # after the rows are on disk: a crash never marks unwritten rows
            bar.update(len(idx))
        bar.close()
        del mat
    return np.load(mat_path, mmap_mode="r"), status == DONE
