"""Content checks of a FAISS store's files: checksums of the raw vectors and of the ANN snapshot, and the
cheap row check applied whenever vectors are loaded.

File lengths alone (:mod:`._faiss_verify`) miss damage in the middle of a file: a few flipped bytes in a
vector row make that reference score cosines far above 1 against every query, i.e. a false match.

**Raw vectors** get a CRC-32 per row, computed from the rows as written and recorded in the same
transaction that commits them, so a repair drops exactly the references whose rows changed. The CRCs are
kept per block of :data:`BLOCK_ROWS` rows (one SQLite row of 4 bytes per vector), which keeps the table
small. Only rows of live references are checked: a removed reference's row is overwritten with zeros after
its removal commits, and needs no CRC update.

**The snapshot** (``main.<g>.faiss``) gets one digest, recorded with the commit that points to it.

**Rows** of a committed store are unit vectors (the store holds L2-normalised embeddings) or zeros (scrubbed
or dropped references): :func:`bad_rows` finds any other row at the cost of one dot product per row.
"""

from __future__ import annotations

import hashlib
import sqlite3
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BLOCK_ROWS = 256
#: |squared norm - 1| tolerated for a stored row (float16 rounding stays below 1e-3)
NORM_TOL = 1e-2
SCHEMA = "CREATE TABLE IF NOT EXISTS checksums (block INTEGER PRIMARY KEY, rows INTEGER NOT NULL, crcs BLOB NOT NULL)"


def row_crcs(x: np.ndarray) -> np.ndarray:
    """CRC-32 of each row's bytes (uint32)."""
    x = np.ascontiguousarray(x)
    return np.array([zlib.crc32(memoryview(r).cast("B")) for r in x], dtype="<u4")


def file_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def bad_rows(x: np.ndarray, allow_zero: bool = False) -> np.ndarray:
    """Positions of the rows of ``x`` no stored vector can be: not finite, or neither unit-norm nor (if
    allowed) zero."""
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

    def block(self, conn: sqlite3.Connection, b: int) -> tuple[np.ndarray, np.ndarray]:
        """(the rows of block ``b`` on disk, the positions in it of live references)."""
        lo = b * BLOCK_ROWS
        hi = min(lo + BLOCK_ROWS, self.stop)
        cur = conn.execute("SELECT id FROM refs WHERE id >= ? AND id < ?", (lo, hi))
        return self.rows(lo, hi), np.fromiter((r[0] - lo for r in cur), dtype=np.int64)


def stored(conn: sqlite3.Connection, blocks: Iterable[int] | None = None) -> dict[int, np.ndarray]:
    """Recorded row CRCs per block: of ``blocks``, or all."""
    if not has_table(conn):
        return {}
    if blocks is None:
        return {int(b): np.frombuffer(c, "<u4") for b, c in conn.execute("SELECT block, crcs FROM checksums")}
    out: dict[int, np.ndarray] = {}
    for b in blocks:
        row = conn.execute("SELECT crcs FROM checksums WHERE block = ?", (b,)).fetchone()
        if row is not None:
            out[b] = np.frombuffer(row[0], "<u4")
    return out


def _changed(b: int, x: np.ndarray, live: np.ndarray, crcs: np.ndarray) -> list[int]:
    """Ids of the live rows of block ``b`` whose content ``x`` differs from their recorded CRC (or is gone)."""
    pos = live[live < len(crcs)]
    now = row_crcs(x)
    gone = pos >= len(now)
    differs = np.zeros(len(pos), dtype=bool)
    differs[~gone] = now[pos[~gone]] != crcs[pos[~gone]]
    return (b * BLOCK_ROWS + pos[differs | gone]).tolist()


def append(conn: sqlite3.Connection, raw: RawFile, start: int, written: np.ndarray) -> None:
    """Record the CRCs of rows ``written`` at ``start`` (inside the transaction committing them).

    The rows before ``start`` keep their recorded CRCs; a block recorded by no earlier commit (a store made
    before checksums were kept) gets the CRCs of what is on disk now.
    """
    crcs = row_crcs(written)
    out = []
    for b in blocks_of(start, start + len(written)):
        lo = b * BLOCK_ROWS
        prefix = stored(conn, [b]).get(b) if lo < start else np.zeros(0, "<u4")
        if prefix is None:
            prefix = row_crcs(raw.rows(lo, start))
        new = np.concatenate([prefix[: max(0, start - lo)], crcs[max(0, lo - start) : lo + BLOCK_ROWS - start]])
        out.append((b, len(new), new.astype("<u4").tobytes()))
    conn.executemany("INSERT OR REPLACE INTO checksums (block, rows, crcs) VALUES (?, ?, ?)", out)


def record_all(conn: sqlite3.Connection, raw: RawFile) -> None:
    """Record the CRCs of every row now on disk (after a repair has dropped what failed them)."""
    conn.execute("DELETE FROM checksums")
    for b in blocks_of(0, raw.stop):
        crcs = row_crcs(raw.block(conn, b)[0])
        conn.execute("INSERT INTO checksums (block, rows, crcs) VALUES (?, ?, ?)", (b, len(crcs), crcs.tobytes()))


@dataclass
class Scan:
    """What a full pass over the raw file found: rows failing their CRC, live rows failing the row check."""

    changed: list[int]
    bad_ids: list[int]

    @property
    def suspect_ids(self) -> list[int]:
        return sorted(set(self.changed) | set(self.bad_ids))

    def problems(self, name: str) -> list[str]:
        out = []
        for ids, what in ((self.changed, "do not match their checksum"), (self.bad_ids, "are not unit vectors")):
            if ids:
                more = " ..." if len(ids) > 5 else ""
                out.append(
                    f"{name}: the vectors of {len(ids)} reference(s) {what} (ids {ids[:5]}{more}): content damaged"
                )
        return out


def scan(conn: sqlite3.Connection, raw: RawFile) -> Scan:
    """Check every row of ``raw`` against its CRC and every live row with :func:`bad_rows`."""
    known = stored(conn)
    result = Scan([], [])
    for b in blocks_of(0, raw.stop):
        x, live = raw.block(conn, b)
        if b in known:
            result.changed += _changed(b, x, live, known[b])
        live = live[live < len(x)]
        result.bad_ids += (b * BLOCK_ROWS + live[bad_rows(x[live])]).tolist()
    return result


def describe(ids: list[int], uris: dict[int, str], limit: int = 5) -> str:
    """``ids`` named by reference id and uri, the first ``limit`` of them."""
    shown = ", ".join(f"{i} ({uris.get(i, '?')!r})" for i in ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def damage_message(location: Path, problems: list[str], reading: bool = False) -> str:
    """What a damaged store tells its caller: the problems, whether anything was written, and the way out."""
    what = "" if reading else ", nothing was written"
    return (
        f"the store at {location} is damaged{what}: {'; '.join(problems)}. "
        "Run `id2-plugin index verify --repair` (references whose vectors are lost are dropped; "
        "add them again)"
    )


def sqlite_damage(conn: sqlite3.Connection, name: str) -> list[str]:
    """SQLite's own check of the database file ``name`` (a damaged page makes later reads fail or lie)."""
    rows = [str(r[0]) for r in conn.execute("PRAGMA integrity_check(3)")]
    if rows == ["ok"]:
        return []
    lines = [line.strip("* ") for r in rows for line in r.splitlines()]
    return [f"{name} fails SQLite's integrity check: {'; '.join(x for x in lines if x and 'in database' not in x)}"]


def over_bound(D: np.ndarray, q: np.ndarray, clip_only: bool) -> tuple[tuple[int, int], float] | None:
    """Clip scores ``D`` (in place) to each query's norm, a cosine of 1 for unit queries. Unless
    ``clip_only``, a score beyond it (and the tolerance) is returned with its position: only a damaged
    vector scores that, and reporting it would be a false match."""
    qnorm = np.linalg.norm(q, axis=1, keepdims=True)
    over = np.argwhere(D > qnorm * (1.0 + NORM_TOL))
    first = None if clip_only or not len(over) else ((int(over[0][0]), int(over[0][1])), float(D[tuple(over[0])]))
    np.minimum(D, qnorm, out=D)
    return first
