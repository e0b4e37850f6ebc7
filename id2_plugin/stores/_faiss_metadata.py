"""The SQLite half of a FAISS store: its schema, the committed meta, transactions, and the queries on the
reference and removal tables.

The meta row ``generation`` is the store's single commit point: a writer puts new bytes on disk first and
only then advances ``generation`` in the one transaction that also inserts or deletes the reference rows,
so a reader sees a commit whole or not at all. Readers use read transactions (WAL: they never block the
writer); the connection deletes securely, so a removed reference's row does not linger in free pages.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import StoreError
from ..types import ReferenceRecord
from . import _integrity as ix

if TYPE_CHECKING:
    from ._faiss_index import IndexSpec

FORMAT = "id2-faiss-store"
FORMAT_VERSION = 1
DB_NAME = "store.sqlite"
SQL_BATCH = 900  # stay below SQLite's host-parameter limit on old builds
_HEX64 = re.compile(r"^[0-9a-f]{64}$")

SCHEMA = (
    """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE refs (
    id INTEGER PRIMARY KEY,
    sha256 TEXT NOT NULL UNIQUE,
    uri TEXT NOT NULL,
    added_at TEXT NOT NULL,
    labels TEXT NOT NULL,
    generation INTEGER NOT NULL
);
CREATE TABLE removed (id INTEGER PRIMARY KEY, generation INTEGER NOT NULL, in_main INTEGER NOT NULL);
CREATE INDEX removed_generation ON removed (generation);
"""
    + ix.SCHEMA
    + ";"
)

MatchFields = tuple[str, str, str, tuple[str, ...]]


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _labels(stored: str) -> tuple[str, ...]:
    # most references carry no labels; parsing "[]" per match was a fifth of a batched query's time
    return () if stored == "[]" else tuple(json.loads(stored))


def _batches(ids: Sequence[Any]) -> Iterator[tuple[list[Any], str]]:
    """``ids`` in parts small enough for one statement, each with its ``?,?,...`` placeholders."""
    for start in range(0, len(ids), SQL_BATCH):
        part = list(ids[start : start + SQL_BATCH])
        yield part, ",".join("?" * len(part))


@dataclass
class Meta:
    """Store-level metadata as committed in SQLite (one consistent snapshot)."""

    embedder: str
    dim: int
    index_type: str
    index_options: dict[str, Any]
    raw_file: str
    generation: int
    next_id: int
    count: int
    snap_gen: int | None
    prev_snap_gen: int | None
    snap_next_id: int
    main_count: int
    clean_gen: int
    trained_count: int
    facts: dict[str, Any]
    search_params: dict[str, Any]
    tuned: dict[str, Any] | None
    created_at: str

    @classmethod
    def from_rows(cls, rows: dict[str, str]) -> Meta:
        v = {k: json.loads(s) for k, s in rows.items()}
        if v.get("format") != FORMAT:
            raise StoreError(f"not an id2 FAISS store (format {v.get('format')!r})")
        if int(v.get("format_version", 0)) > FORMAT_VERSION:
            raise StoreError(
                f"store format version {v['format_version']} is newer than this id2-plugin supports "
                f"({FORMAT_VERSION}); upgrade"
            )
        return cls(**{f: v[f] for f in cls.__dataclass_fields__})


def init_db(tmp: Path, spec: IndexSpec, embedder_identity: str) -> None:
    """Write the schema and the meta of generation 0 to a database file at ``tmp`` (no WAL left beside it)."""
    conn = sqlite3.connect(tmp, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(SCHEMA)
        raw_ext = "f32" if spec.raw_dtype == np.float32 else "f16"
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "embedder": embedder_identity,
            "dim": spec.dim,
            "index_type": spec.kind,
            "index_options": spec.options,
            "raw_file": f"vectors.0.{raw_ext}",
            "generation": 0,
            "next_id": 0,
            "count": 0,
            "snap_gen": None,
            "prev_snap_gen": None,
            "snap_next_id": 0,
            "main_count": 0,
            "clean_gen": 0,
            "trained_count": 0,
            "facts": {},
            "search_params": {},
            "tuned": None,
            "created_at": now(),
        }
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()])
        conn.execute("COMMIT")
    finally:
        conn.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{tmp}{suffix}").unlink(missing_ok=True)


def set_meta(conn: sqlite3.Connection, **values: Any) -> None:
    conn.executemany("UPDATE meta SET value = ? WHERE key = ?", [(json.dumps(v), k) for k, v in values.items()])


def insert_refs(conn: sqlite3.Connection, added: Sequence[tuple[int, ReferenceRecord]], gen: int) -> None:
    """Insert the rows of references ``added`` as ``(reference id, record)`` at generation ``gen``."""
    stamp = now()
    conn.executemany(
        "INSERT INTO refs (id, sha256, uri, added_at, labels, generation) VALUES (?, ?, ?, ?, ?, ?)",
        [(rid, r.sha256, r.uri, r.added_at or stamp, json.dumps(list(r.labels)), gen) for rid, r in added],
    )


def mark_removed(conn: sqlite3.Connection, ids: Sequence[int], gen: int, main_below: int = 0) -> None:
    """Record ``ids`` as removed at ``gen``; those below ``main_below`` sit in the ANN index (``in_main``:
    an HNSW graph keeps them as tombstones until it is rebuilt)."""
    conn.executemany(
        "INSERT OR REPLACE INTO removed (id, generation, in_main) VALUES (?, ?, ?)",
        [(i, gen, int(i < main_below)) for i in ids],
    )


def delete_refs(conn: sqlite3.Connection, ids: Sequence[int]) -> None:
    for part, marks in _batches(ids):
        conn.execute(f"DELETE FROM refs WHERE id IN ({marks})", part)


def uris(conn: sqlite3.Connection, ids: Sequence[int]) -> dict[int, str]:
    out: dict[int, str] = {}
    for part, marks in _batches(ids):
        out.update(conn.execute(f"SELECT id, uri FROM refs WHERE id IN ({marks})", part).fetchall())
    return out


def live_ids(conn: sqlite3.Connection, lo: int, hi: int) -> np.ndarray:
    cur = conn.execute("SELECT id FROM refs WHERE id >= ? AND id < ? ORDER BY id", (lo, hi))
    return np.fromiter((r[0] for r in cur), dtype=np.int64)


def all_live(conn: sqlite3.Connection, ids: np.ndarray) -> bool:
    wanted = sorted({int(i) for i in ids})
    found = 0
    for part, marks in _batches(wanted):
        found += conn.execute(f"SELECT COUNT(*) FROM refs WHERE id IN ({marks})", part).fetchone()[0]
    return found == len(wanted)


def known(conn: sqlite3.Connection, shas: Sequence[str]) -> set[str]:
    """Which of ``shas`` the store holds."""
    found: set[str] = set()
    for part, marks in _batches(shas):
        found.update(r[0] for r in conn.execute(f"SELECT sha256 FROM refs WHERE sha256 IN ({marks})", part))
    return found


def resolve(conn: sqlite3.Connection, keys: Sequence[str]) -> set[int]:
    """Reference ids of ``keys`` given as reference id or sha256; unknown keys are left out."""
    ids: set[int] = set()
    for key in keys:
        key = str(key).strip()
        row = None
        if key.isdigit() and len(key) < 19:
            row = conn.execute("SELECT id FROM refs WHERE id = ?", (int(key),)).fetchone()
        if row is None and _HEX64.match(key.lower()):
            row = conn.execute("SELECT id FROM refs WHERE sha256 = ?", (key.lower(),)).fetchone()
        if row is not None:
            ids.add(int(row[0]))
    return ids


def match_fields(conn: sqlite3.Connection, ids: np.ndarray) -> dict[int, MatchFields]:
    """(reference id, uri, sha256, labels) of each live id in ``ids`` (missing = -1 and removed ids are absent)."""
    out: dict[int, MatchFields] = {}
    for part, marks in _batches(np.unique(ids[ids >= 0]).tolist()):
        rows = conn.execute(f"SELECT id, sha256, uri, labels FROM refs WHERE id IN ({marks})", part).fetchall()
        out.update((rid, (str(rid), uri, sha, _labels(labels))) for rid, sha, uri, labels in rows)
    return out


def removed_in_main(conn: sqlite3.Connection, since: int) -> np.ndarray:
    """Ids removed after generation ``since`` that sit in the ANN index."""
    cur = conn.execute("SELECT id FROM removed WHERE generation > ? AND in_main = 1 ORDER BY id", (since,))
    return np.array([r[0] for r in cur.fetchall()], dtype=np.int64)


def removed_between(conn: sqlite3.Connection, after: int, upto: int) -> np.ndarray:
    cur = conn.execute("SELECT id FROM removed WHERE generation > ? AND generation <= ? ORDER BY id", (after, upto))
    return np.array([r[0] for r in cur.fetchall()], dtype=np.int64)


class Database:
    """The store's SQLite connection, opened lazily and again in a forked child.

    ``on_fork`` runs when a forked child first touches the database: a child must not share the parent's
    connection, and the caller drops whatever else it held for the parent (cached index, lock handle).
    """

    def __init__(self, path: Path, on_fork: Callable[[], None]) -> None:
        self.path = path
        self.timeout = 60.0
        self._on_fork = on_fork
        self._conn: sqlite3.Connection | None = None
        self._pid = os.getpid()

    def follow_fork(self) -> None:
        """In a forked child, forget the parent's connection and run ``on_fork`` (once per child)."""
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._conn = None
            self._on_fork()

    @property
    def conn(self) -> sqlite3.Connection:
        self.follow_fork()
        if self._conn is None:
            try:
                conn = sqlite3.connect(
                    self.path, isolation_level=None, check_same_thread=False, timeout=max(self.timeout, 1.0)
                )
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute("PRAGMA secure_delete=ON")  # a removed reference's row is zeroed, not just unlinked
            except sqlite3.Error as exc:
                raise StoreError(f"cannot open the store database {self.path}: {exc}") from None
            self._conn = conn
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def read_meta(self) -> Meta:
        try:
            rows = dict(self.conn.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"the store database {self.path} is unreadable: {exc}") from None
        if not rows:
            raise StoreError(f"the store at {self.path.parent} is not initialised")
        return Meta.from_rows(rows)

    def generation(self) -> int:
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        return int(json.loads(row[0]))

    @contextmanager
    def read_txn(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot of the database (WAL readers never block the writer)."""
        conn = self.conn
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

    @contextmanager
    def write_txn(self) -> Iterator[sqlite3.Connection]:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def removed_ids(self, since: int) -> list[int]:
        cur = self.conn.execute("SELECT id FROM removed WHERE generation > ? ORDER BY id", (since,))
        return [int(r[0]) for r in cur]

    def tombstones(self, since: int) -> int:
        """How many ids removed after generation ``since`` sit in the ANN index."""
        row = self.conn.execute(
            "SELECT COUNT(*) FROM removed WHERE generation > ? AND in_main = 1", (since,)
        ).fetchone()
        return int(row[0])
