"""The raw vector file of a FAISS store (``vectors.<g>.f32|f16``: row = reference id) and durable writes.

Writers append rows past the committed end and fsync them before the commit that references them; a crash
in between leaves bytes nobody references, simply overwritten by the next writer. Committed rows are never
modified in place, except that a removed reference's row is overwritten with zeros: its embedding (maybe
that of an abuse image) must not stay recoverable from the store's files. Readers memory-map the file:
the rows they read are file-backed page cache, not process memory.
"""

from __future__ import annotations

import mmap
import os
import stat
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..errors import StoreDamagedError
from . import _integrity as ix
from ._faiss_metadata import Meta


def fsync_dir(path: Path) -> None:
    """Make a rename / file creation durable (POSIX; Windows has no directory handles to fsync)."""
    if os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_size(location: Path, name: str) -> int:
    """Size of a store file; 0 if it is gone (a writer may delete superseded files at any time)."""
    try:
        st = (location / name).stat()
    except OSError:
        return 0
    return st.st_size if stat.S_ISREG(st.st_mode) else 0


def _advise_random(raw: np.memmap) -> None:
    """Re-ranking reads scattered rows: without this hint the kernel reads ~128 KB ahead of every 1 KB row."""
    mm = getattr(raw, "_mmap", None)
    if mm is not None and hasattr(mmap, "MADV_RANDOM"):
        mm.madvise(mmap.MADV_RANDOM)


def _read_rows(raw: np.ndarray, start: int, n: int) -> np.ndarray:
    """Rows ``[start, start + n)`` as float32, read with a plain file read when ``raw`` is a memmap.

    Builds and exact scans stream the whole raw file: reading through the mapping would leave every page
    mapped into the process (10 GB of RSS at 10M x 512), a read() only goes through the page cache.
    """
    if isinstance(raw, np.memmap) and raw.filename is not None:
        row = raw.shape[1]
        x = np.fromfile(raw.filename, dtype=raw.dtype, count=n * row, offset=raw.offset + start * row * raw.itemsize)
        if len(x) == n * row:
            return x.reshape(n, row).astype(np.float32)
    return np.asarray(raw[start : start + n], dtype=np.float32)


def fetcher(raw: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """``fetch(ids)``: the rows of ``ids`` of ``raw`` as float32."""

    def fetch(ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) and ids[-1] - ids[0] + 1 == len(ids):  # contiguous: a read avoids a gather
            return _read_rows(raw, int(ids[0]), len(ids))
        return np.asarray(raw[ids], dtype=np.float32)

    return fetch


class VectorFile:
    """The raw vector file named by a committed meta, in the store directory ``location``."""

    def __init__(self, location: Path, dim: int, dtype: np.dtype) -> None:
        self.location = location
        self.dim = dim
        self.dtype = np.dtype(dtype)

    def path(self, meta: Meta) -> Path:
        return self.location / meta.raw_file

    @property
    def row_bytes(self) -> int:
        return self.dim * self.dtype.itemsize

    def rows_on_disk(self, meta: Meta) -> int:
        """Whole rows the raw vector file holds (0 when it is missing)."""
        return file_size(self.location, meta.raw_file) // self.row_bytes

    def checked(self, meta: Meta) -> ix.RawFile:
        """The committed rows, as the checksum scan reads them."""
        return ix.RawFile(self.path(meta), self.dtype, self.dim, meta.next_id)

    def write(self, meta: Meta, start: int, rows: np.ndarray) -> np.ndarray:
        """Write ``rows`` at row ``start`` (fsynced); returns them as written (the raw dtype)."""
        path = self.path(meta)
        created = not path.exists()
        data = np.ascontiguousarray(rows, dtype=self.dtype)
        # Rows past the committed end may hold bytes of a crashed write: they are simply overwritten.
        with open(path, "r+b" if not created else "w+b") as f:
            f.seek(start * self.dim * data.itemsize)
            f.write(memoryview(data).cast("B"))
            f.flush()
            os.fsync(f.fileno())
        if created:
            fsync_dir(self.location)
        return data

    def open(self, meta: Meta) -> np.ndarray | None:
        """The committed rows memory-mapped read-only (None while there are none)."""
        if meta.next_id == 0:
            return None
        try:
            raw = np.memmap(self.path(meta), dtype=self.dtype, mode="r", shape=(meta.next_id, self.dim))
        except (OSError, ValueError) as exc:
            problem = f"{meta.raw_file} is missing or truncated ({exc})"
            raise StoreDamagedError(ix.damage_message(self.location, [problem])) from None
        _advise_random(raw)
        return raw

    def nonzero(self, meta: Meta, ids: Sequence[int]) -> list[int]:
        """Those of ``ids`` whose row on disk is not all zeros."""
        rows = min(self.rows_on_disk(meta), meta.next_id)
        held = np.array([i for i in ids if i < rows], dtype=np.int64)
        if not len(held):
            return []
        raw = np.memmap(self.path(meta), dtype=self.dtype, mode="r", shape=(rows, self.dim))
        return [int(i) for i in held[np.any(raw[held] != 0, axis=1)]]

    def zero(self, meta: Meta, ids: Sequence[int]) -> None:
        """Overwrite the rows of ``ids`` with zeros (fsynced)."""
        rows = min(self.rows_on_disk(meta), meta.next_id)
        zero = bytes(self.row_bytes)
        with open(self.path(meta), "r+b") as f:
            for i in ids:
                if i < rows:
                    f.seek(i * len(zero))
                    f.write(zero)
            f.flush()
            os.fsync(f.fileno())

    def restore_length(self, meta: Meta) -> None:
        """Bring the file back to its committed length; the rows this adds are zeros."""
        with open(self.path(meta), "ab") as f:
            f.truncate(meta.next_id * self.row_bytes)
            os.fsync(f.fileno())
