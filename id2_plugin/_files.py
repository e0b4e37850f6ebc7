"""Content identity of files: the sha256 every part of the package keys references, weights and inputs by."""

from __future__ import annotations

import hashlib
import os


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes, read in chunks so a large file never sits in memory whole."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_file_or_none(path: str | os.PathLike) -> str | None:
    """Like :func:`sha256_file`, but ``None`` for a file that cannot be read (callers report it later)."""
    try:
        return sha256_file(path)
    except OSError:
        return None
