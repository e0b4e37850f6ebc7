"""Content checks of a FAISS store's files: checksums of the raw vectors and of the ANN snapshot, and the
cheap row check applied whenever vectors are loaded.

File lengths alone (``faiss_store._damage``) miss damage in the middle of a file: a few flipped bytes in a
vector row make that reference score cosines far above 1 against every query, i.e. a false match.

**Raw vectors** are checksummed per block of :data:`BLOCK_ROWS` rows, recorded in the SQLite table
``checksums`` in the same transaction that commits the rows. Blocks keep a repair to the few hundred
references around the damage and keep the cost of an append or a removal to re-reading one block. A block's
checksum is taken with the rows of references that are not live (removed, dropped) read as zeros: the
removal commit updates it, and the later scrub that zeroes those rows on disk leaves it unchanged, so a crash
between the two leaves nothing to reconcile.

**The snapshot** (``main.<g>.faiss``) gets one digest, recorded with the commit that points to it.

**Rows** of a committed store are unit vectors (the store holds L2-normalised embeddings) or zeros (scrubbed
or dropped references): :func:`bad_rows` finds any other row at the cost of one dot product per row.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BLOCK_ROWS = 64
#: |squared norm - 1| tolerated for a stored row (float16 rounding stays below 1e-3)
NORM_TOL = 1e-2
SCHEMA = "CREATE TABLE IF NOT EXISTS checksums (block INTEGER PRIMARY KEY, rows INTEGER NOT NULL, digest TEXT NOT NULL)"


def digest(data: bytes | memoryview) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def file_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def bad_rows(x: np.ndarray, allow_zero: bool = False) -> np.ndarray:
    """Positions of the rows of ``x`` no stored vector can be: not finite, or neither unit-norm nor (if allowed) zero."""
    x = np.asarray(x, dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        sq = np.einsum("ij,ij->i", x, x)
    ok = np.isfinite(sq) & (np.abs(sq - 1.0) <= NORM_TOL)
    if allow_zero:
        ok |= sq == 0
    return np.flatnonzero(~ok)


def blocks_of(start: int, stop: int) -> range:
    """Block numbers holding rows ``[start, stop)``."""
    return range(start // BLOCK_ROWS, (stop - 1) // BLOCK_ROWS + 1) if stop > start else range(0)


def has_table(conn: sqlite3.Connection) -> bool:
    """Stores created before checksums were kept lack the table until their next write."""
    return conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'checksums'").fetchone() is not None


@dataclass(frozen=True)
class RawFile:
    """The raw vector file of one committed generation: ``stop`` rows of ``dim`` values of ``dtype``."""

    path: Path
    dtype: np.dtype
    dim: int
    stop: int

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` as stored (shorter when the file is)."""
        n = max(0, stop - start)
        x = np.fromfile(self.path, dtype=self.dtype, count=n * self.dim, offset=start * self.dim * self.dtype.itemsize)
        return x[: len(x) // self.dim * self.dim].reshape(-1, self.dim)

    def block(self, conn: sqlite3.Connection, b: int, rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(rows of block ``b`` with non-live rows zeroed, the live ids among them); ``rows`` caps its length."""
        lo = b * BLOCK_ROWS
        hi = min(lo + BLOCK_ROWS, self.stop) if rows is None else lo + rows
        x = self.rows(lo, hi).copy()
        live = np.fromiter((r[0] for r in conn.execute("SELECT id FROM refs WHERE id >= ? AND id < ?", (lo, hi))),
                           dtype=np.int64)
        keep = np.zeros(len(x), dtype=bool)
        keep[live[live - lo < len(x)] - lo] = True
        x[~keep] = 0
        return x, live

    def block_digest(self, conn: sqlite3.Connection, b: int, rows: int | None = None) -> tuple[int, str]:
        x, _ = self.block(conn, b, rows)
        return len(x), digest(memoryview(np.ascontiguousarray(x)).cast("B"))


def stored(conn: sqlite3.Connection, blocks: Iterable[int] | None = None) -> dict[int, tuple[int, str]]:
    """Recorded (rows, digest) per block: of ``blocks``, or all."""
    if not has_table(conn):
        return {}
    if blocks is None:
        cur = conn.execute("SELECT block, rows, digest FROM checksums")
        return {int(b): (int(r), d) for b, r, d in cur}
    out: dict[int, tuple[int, str]] = {}
    for b in blocks:
        row = conn.execute("SELECT rows, digest FROM checksums WHERE block = ?", (b,)).fetchone()
        if row is not None:
            out[b] = (int(row[0]), row[1])
    return out


def mismatched(conn: sqlite3.Connection, raw: RawFile, blocks: Iterable[int]) -> list[int]:
    """The blocks among ``blocks`` whose content no longer matches their recorded checksum."""
    return [b for b, (rows, d) in stored(conn, blocks).items() if raw.block_digest(conn, b, rows) != (rows, d)]


def record(conn: sqlite3.Connection, raw: RawFile, blocks: Iterable[int]) -> None:
    """Record the current checksum of ``blocks`` (inside the writer's transaction)."""
    conn.executemany("INSERT OR REPLACE INTO checksums (block, rows, digest) VALUES (?, ?, ?)",
                     [(b, *raw.block_digest(conn, b)) for b in blocks])


@dataclass
class Scan:
    """What a full pass over the raw file found: blocks failing their checksum, live rows failing the row check."""

    bad_blocks: list[int]
    bad_ids: list[int]

    def suspect_ids(self, conn: sqlite3.Connection, raw: RawFile) -> list[int]:
        """Live ids whose vectors cannot be trusted: every live row of a failing block, and every bad row."""
        ids = set(self.bad_ids)
        for b in self.bad_blocks:
            ids.update(int(i) for i in raw.block(conn, b)[1])
        return sorted(ids)


def scan(conn: sqlite3.Connection, raw: RawFile) -> Scan:
    """Check every block of ``raw`` against its checksum and every live row with :func:`bad_rows`."""
    known = stored(conn)
    result = Scan([], [])
    for b in blocks_of(0, raw.stop):
        rows, d = known.get(b, (None, None))
        x, live = raw.block(conn, b, rows)
        if d is not None and digest(memoryview(np.ascontiguousarray(x)).cast("B")) != d:
            result.bad_blocks.append(b)
        rel = live - b * BLOCK_ROWS
        rel = rel[rel < len(x)]
        result.bad_ids += [int(b * BLOCK_ROWS + rel[i]) for i in bad_rows(x[rel])]
    return result


def describe(ids: list[int], uris: dict[int, str], limit: int = 5) -> str:
    """``ids`` named by reference id and uri, the first ``limit`` of them."""
    shown = ", ".join(f"{i} ({uris.get(i, '?')!r})" for i in ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")
