"""The built-in persistent reference store: FAISS for search, SQLite for metadata, one writer at a time.

Layout of a store directory::

    store.sqlite            metadata (WAL): references, removals, store-level meta incl. the generation
    vectors.<g>.f32|f16     raw vectors, row = reference id (float32 for ``flat``, float16 otherwise)
    main.<g>.faiss          the trained / graph ANN index (ivf_flat, ivf_pq, ivf_pq_fs, hnsw only)
    write.lock              writers serialise on this file (fcntl lock via ``filelock``)

**Commit protocol.** The SQLite meta row ``generation`` is the single commit point. A writer (holding the
lock) first appends the new rows to the raw vector file past the committed end and fsyncs it, or writes a
new index snapshot to a temp file, fsyncs and renames it to ``main.<new generation>.faiss``; only then does
one SQLite transaction insert the reference rows and advance ``generation``/``next_id``/the snapshot
pointer. A crash before that transaction leaves bytes nobody references (cleaned up by the next writer);
a crash after it loses nothing. Committed rows and snapshot files are never modified in place, with one
exception: the rows of removed references (below).

**Reads.** Every query reads ``generation`` inside a SQLite read transaction (a snapshot of the meta). If a
writer committed since the last query, the reader catches up incrementally: new rows are read from the raw
file into an exact in-memory buffer and removals are applied; only a new snapshot forces a full reload.

**Index types.** ``flat`` / ``flat_fp16`` are exact (the raw file is the index, loaded at open). For
``ivf_flat`` / ``ivf_pq`` / ``ivf_pq_fs`` / ``hnsw`` the store keeps an ANN index (``main``) plus an exact
buffer of the references added since the last snapshot; queries search both and merge. The buffer is folded
into the ANN index when it holds ``max(merge_min, merge_ratio * indexed)`` vectors, which bounds both the
writer's snapshot I/O (amortised) and the buffer's brute-force cost. PQ indexes re-score their best
candidates from the raw file, which stays memory-mapped: the rows read (and the kernel's fault-around
neighbours) are file-backed page cache, not process memory, so ``ivf_pq_fs`` (4-bit codes, 32 bytes per
512-d vector) needs ~0.4 GB of anonymous memory for 10M references.

**Training policy (IVF).** While the store holds fewer than ``train_min`` vectors (``auto``: 20,000 with
``nlist: auto``, else 39 per list; IVF-PQ also needs 39 per PQ centroid), every search is exact over the
buffer and ``info().extra`` says so. At the first merge past that size the index is trained on a seeded
sample of at most ``max_train_per_list * nlist`` stored vectors and filled with all of them. With
``nlist: auto`` (~2 sqrt N) it is retrained from the raw vectors each time the store grows
``retrain_growth``-fold (0 disables), so the lists keep up with the data; ``compact(rebuild=True)``
retrains on demand.

**Removal.** IVF and flat indexes delete ids physically. HNSW graphs cannot, so removed ids become
tombstones filtered inside the search (a FAISS ``IDSelector``), and the graph is rebuilt from the raw
vectors once tombstones exceed ``tombstone_ratio`` of it.

A removed reference's embedding must not stay recoverable from the store's files (it may be that of an
abuse image). Right after the removal commits, the writer overwrites its raw row with zeros (the
generation up to which that was done is kept in ``facts["scrubbed_gen"]``, so a crash in between is
finished by the next writer), and when the id sat in an ANN snapshot it writes a new snapshot without
it (IVF deletes it; an HNSW graph keeps the node with a zeroed vector as a tombstone) and deletes the old
snapshot at once. The SQLite row is deleted with ``secure_delete`` on. What the file system or device
keeps of overwritten or deleted blocks (copy-on-write file systems, SSD wear levelling, backups) is
beyond the store's reach.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import re
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .._lazy import require
from ..errors import IncompatibleStoreError, StoreDamagedError, StoreError
from ..types import AddResult, Match, ReferenceRecord, StoreInfo
from . import _faiss_index as fx
from . import _integrity as ix
from .base import ReferenceStore

logger = logging.getLogger(__name__)

FORMAT = "id2-faiss-store"
FORMAT_VERSION = 1
DB_NAME = "store.sqlite"
LOCK_NAME = "write.lock"
_CHUNK = 65_536
_SQL_BATCH = 900  # stay below SQLite's host-parameter limit on old builds
_HEX64 = re.compile(r"^[0-9a-f]{64}$")

#: Fault-injection seam for the crash tests: called with a stage name at each step of a commit.
_fault_hook: Callable[[str], None] | None = None


def _checkpoint(stage: str) -> None:
    if _fault_hook is not None:
        _fault_hook(stage)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _fsync_dir(path: Path) -> None:
    """Make a rename / file creation durable (POSIX; Windows has no directory handles to fsync)."""
    if os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


def _labels(stored: str) -> tuple[str, ...]:
    # most references carry no labels; parsing "[]" per match was a fifth of a batched query's time
    return () if stored == "[]" else tuple(json.loads(stored))


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_SCHEMA = (
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


@dataclass
class _Meta:
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
    def from_rows(cls, rows: dict[str, str]) -> _Meta:
        v = {k: json.loads(s) for k, s in rows.items()}
        if v.get("format") != FORMAT:
            raise StoreError(f"not an id2 FAISS store (format {v.get('format')!r})")
        if int(v.get("format_version", 0)) > FORMAT_VERSION:
            raise StoreError(
                f"store format version {v['format_version']} is newer than this id2-plugin supports ({FORMAT_VERSION}); upgrade"
            )
        return cls(**{f: v[f] for f in cls.__dataclass_fields__})


@dataclass(frozen=True)
class TuningView:
    """What tuning needs of a FAISS store: its ANN index, the ids in it, their raw vectors, a search."""

    index: Any  # the built ANN index; None while searches are exact
    ids: np.ndarray
    fetch: Callable[[np.ndarray], np.ndarray]
    params: dict[str, Any]  # the search parameters in effect
    search: Callable[[np.ndarray, int, dict[str, Any]], tuple[np.ndarray, np.ndarray]]


@dataclass
class _State:
    """What a process holds in memory to answer queries at one committed generation."""

    generation: int
    epoch: tuple[str, int | None]  # (raw file, snapshot generation): a change forces a full reload
    next_id: int  # raw rows [0, next_id) are reflected
    snap_next_id: int
    main: Any | None
    buffer: Any
    tombstones: set[int] = field(default_factory=set)
    selector: Any | None = None
    raw: np.ndarray | None = None
    search_params: dict[str, Any] = field(default_factory=dict)


class FaissStore(ReferenceStore):
    """A persistent FAISS reference store (see the module docstring for layout and guarantees).

    ``embedder_identity`` and ``dim`` are required to create a store; opening an existing one with
    ``None`` works for read-only use (info, remove, query). When given, they must match the store's
    (:class:`IncompatibleStoreError` otherwise). ``index``/``index_options`` pick the index type when the
    store is created; on open the stored type and build options win, while search-time options
    (``nprobe``, ``efSearch``, ``rerank``, merge policy, ``lock_timeout``) given here apply to this handle.
    """

    backend = "faiss"

    def __init__(
        self,
        location: str | os.PathLike[str],
        embedder_identity: str | None = None,
        dim: int | None = None,
        index: str = "flat",
        index_options: dict[str, Any] | None = None,
        create: bool = False,
    ) -> None:
        self.location = Path(location).expanduser()
        self._db_path = self.location / DB_NAME
        self._mutex = threading.RLock()
        self._conn_obj: sqlite3.Connection | None = None
        self._pid = os.getpid()
        self._state: _State | None = None
        self._opened_identity = embedder_identity
        self._lock_timeout = 60.0
        requested = dict(index_options or {})
        if not self._db_path.is_file():
            if not create:
                raise StoreError(f"no reference store at {self.location}; create it with `id2-plugin index add`")
            if embedder_identity is None or dim is None:
                raise StoreError(f"creating the store at {self.location} needs the embedder identity and dimension")
            spec = fx.IndexSpec.create(index, int(dim), requested)
            self._create(spec, embedder_identity)
        meta = self._read_meta()
        self._embedder = meta.embedder
        self._dim = int(meta.dim)
        stored = fx.IndexSpec.create(meta.index_type, self._dim, meta.index_options)
        ignored = {k: v for k, v in requested.items() if k in fx.STRUCTURAL_KEYS and stored.options.get(k) != v}
        if create and (index != meta.index_type or ignored):
            # The configured type only matters at creation; an existing store keeps what it was built with.
            logger.info(
                "store %s already exists as %r %s; keeping it (create a new store to change the index)",
                self.location,
                meta.index_type,
                stored.options,
            )
        runtime = {k: v for k, v in requested.items() if k not in fx.STRUCTURAL_KEYS and k in stored.options}
        foreign = sorted(k for k in requested if k not in stored.options)
        if foreign:
            logger.warning(
                "ignoring store.index_options %s: not options of this store's index %r", foreign, meta.index_type
            )
        self._spec = stored.with_runtime(runtime)
        self._explicit_search = {k for k in runtime if k in ("nprobe", "efSearch", "rerank")}
        self._lock_timeout = float(self._spec.options["lock_timeout"])
        filelock = require("filelock")
        self._flock = filelock.FileLock(str(self.location / LOCK_NAME))
        if embedder_identity is not None:
            self.check_compatible(embedder_identity)
        if dim is not None and int(dim) != self._dim:
            raise IncompatibleStoreError(
                f"the store at {self.location} holds {self._dim}-dim vectors but the embedder produces {dim}-dim ones"
            )

    # -- properties ----------------------------------------------------------------------------------
    @property
    def embedder_identity(self) -> str:
        return self._embedder

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def index_type(self) -> str:
        return self._spec.kind

    # -- creation / connection -----------------------------------------------------------------------
    def _create(self, spec: fx.IndexSpec, embedder_identity: str) -> None:
        """Create the store atomically: the database appears under its final name fully initialised."""
        if self.location.exists() and not self.location.is_dir():
            raise StoreError(f"{self.location} exists and is not a directory")
        self.location.mkdir(parents=True, exist_ok=True)
        foreign = [p.name for p in self.location.iterdir() if p.name != LOCK_NAME and not p.name.startswith(DB_NAME)]
        if foreign and not self._db_path.exists():
            raise StoreError(f"{self.location} is not empty and is not an id2 reference store ({foreign[0]}, ...)")
        filelock = require("filelock")
        lock = filelock.FileLock(str(self.location / LOCK_NAME))
        try:
            lock.acquire(timeout=float(spec.options["lock_timeout"]))
        except filelock.Timeout:
            raise StoreError(f"timed out waiting for the write lock of {self.location}") from None
        try:
            if self._db_path.exists():  # another process created it while we waited
                return
            self._remove_db_temps()  # left by a creator that failed or was killed: we hold the lock
            tmp = self.location / f"{DB_NAME}.{os.getpid()}.tmp"
            try:
                self._init_db(tmp, spec, embedder_identity)
                _fsync_file(tmp)
                os.replace(tmp, self._db_path)
                _fsync_dir(self.location)
            except (OSError, sqlite3.Error) as exc:
                self._remove_db_temps()
                raise StoreError(f"creating the store at {self.location} failed (is the disk full?): {exc}") from None
        finally:
            lock.release()

    def _remove_db_temps(self) -> None:
        for p in self.location.glob(f"{DB_NAME}.*.tmp*"):
            p.unlink(missing_ok=True)

    @staticmethod
    def _init_db(tmp: Path, spec: fx.IndexSpec, embedder_identity: str) -> None:
        """Write the schema and the meta of generation 0 to a database file at ``tmp`` (no WAL left beside it)."""
        conn = sqlite3.connect(tmp, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)
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
                "created_at": _now(),
            }
            conn.execute("BEGIN")
            conn.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()])
            conn.execute("COMMIT")
        finally:
            conn.close()
        for suffix in ("-wal", "-shm"):
            Path(f"{tmp}{suffix}").unlink(missing_ok=True)

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._conn_obj is None or self._pid != os.getpid():
            # A forked child must not share the parent's SQLite connection or cached index.
            if self._pid != os.getpid():
                self._state = None
                self._pid = os.getpid()
                filelock = require("filelock")
                self._flock = filelock.FileLock(str(self.location / LOCK_NAME))
            try:
                conn = sqlite3.connect(
                    self._db_path, isolation_level=None, check_same_thread=False, timeout=max(self._lock_timeout, 1.0)
                )
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute("PRAGMA secure_delete=ON")  # a removed reference's row is zeroed, not just unlinked
            except sqlite3.Error as exc:
                raise StoreError(f"cannot open the store database {self._db_path}: {exc}") from None
            self._conn_obj = conn
        return self._conn_obj

    def close(self) -> None:
        with self._mutex:
            self._state = None
            if self._conn_obj is not None:
                self._conn_obj.close()
                self._conn_obj = None

    # -- meta ----------------------------------------------------------------------------------------
    def _read_meta(self) -> _Meta:
        try:
            rows = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"the store database {self._db_path} is unreadable: {exc}") from None
        if not rows:
            raise StoreError(f"the store at {self.location} is not initialised")
        return _Meta.from_rows(rows)

    def _generation(self) -> int:
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        return int(json.loads(row[0]))

    @staticmethod
    def _set_meta(conn: sqlite3.Connection, **values: Any) -> None:
        conn.executemany("UPDATE meta SET value = ? WHERE key = ?", [(json.dumps(v), k) for k, v in values.items()])

    @contextmanager
    def _read_txn(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot of the database (WAL readers never block the writer)."""
        conn = self._conn
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

    @contextmanager
    def _write_txn(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @contextmanager
    def _writing(self, check: bool = True) -> Iterator[_Meta]:
        """Hold the store's write lock; yields the latest committed meta. Errors drop the cached index.

        With ``check`` a store whose files are shorter than the committed meta says is refused before
        anything is written: appending at the committed end of a truncated file would zero-fill the gap.
        """
        filelock = require("filelock")
        with self._mutex:
            try:
                self._flock.acquire(timeout=self._lock_timeout)
            except filelock.Timeout:
                raise StoreError(
                    f"the store at {self.location} is locked by another writer (waited {self._lock_timeout:g} s); "
                    "retry later or raise store.index_options.lock_timeout"
                ) from None
            try:
                self._conn.execute(ix.SCHEMA)
                meta = self._read_meta()
                problems = self._damage(meta) if check else []
                if problems:
                    raise StoreDamagedError(self._damage_message(problems))
                self._cleanup(meta)
                yield self._scrub_removed(meta) if check else meta
            except StoreError:
                self._state = None
                raise
            except (OSError, sqlite3.Error) as exc:
                self._state = None
                raise StoreError(f"writing to the store at {self.location} failed: {exc}") from exc
            except BaseException:
                self._state = None
                raise
            finally:
                self._flock.release()

    def _cleanup(self, meta: _Meta) -> None:
        """Delete files no committed generation references (left by a crashed or superseded writer).

        The previous snapshot survives only until the next commit after the merge that replaced it, so a
        reader that read the older generation just before the merge can still open it.
        """
        keep_snaps = {meta.snap_gen}
        if meta.generation == meta.snap_gen:
            keep_snaps.add(meta.prev_snap_gen)
        for p in self.location.iterdir():
            name = p.name
            failed_create = name.startswith(f"{DB_NAME}.") and ".tmp" in name
            if (name.endswith(".tmp") and not name.startswith(DB_NAME)) or failed_create:
                p.unlink(missing_ok=True)  # store.sqlite.<pid>.tmp*: a creation that failed (lock held: none runs)
            elif name.startswith("main.") and name.endswith(".faiss"):
                try:
                    g = int(name.split(".")[1])
                except ValueError:
                    continue
                if g not in keep_snaps:
                    p.unlink(missing_ok=True)
            elif name.startswith("vectors.") and name != meta.raw_file:
                p.unlink(missing_ok=True)

    # -- raw vectors -----------------------------------------------------------------------------------
    def _raw_path(self, meta: _Meta) -> Path:
        return self.location / meta.raw_file

    def _row_bytes(self) -> int:
        return self._dim * np.dtype(self._spec.raw_dtype).itemsize

    def _raw_rows_on_disk(self, meta: _Meta) -> int:
        """Whole rows the raw vector file holds (0 when it is missing)."""
        return self._file_size(meta.raw_file) // self._row_bytes()

    def _damage(self, meta: _Meta, deep: bool = False) -> list[str]:
        """What is wrong with the files of the committed generation ``meta`` (empty: nothing found).

        Cheap checks (file lengths against the committed meta, SQLite rows against the generation) run
        before every write and in ``info``; ``deep`` also loads the ANN snapshot.
        """
        problems: list[str] = []
        rows = self._raw_rows_on_disk(meta)
        if rows < meta.next_id:
            problems.append(
                f"{meta.raw_file} holds {rows} of the {meta.next_id} committed vectors "
                f"({self._file_size(meta.raw_file)} of {meta.next_id * self._row_bytes()} bytes): truncated or missing"
            )
        n, top = self._conn.execute("SELECT COUNT(*), MAX(id) FROM refs").fetchone()
        if n != meta.count or (top is not None and top >= meta.next_id):
            problems.append(
                f"the database lists {n} references (highest id {top}) but generation "
                f"{meta.generation} committed {meta.count} below id {meta.next_id}"
            )
        if meta.snap_gen is not None:
            problems += self._snapshot_damage(meta, deep)
        if deep and rows >= meta.next_id:
            problems += ix.scan(self._conn, self._raw_file(meta)).problems(meta.raw_file)
        if deep and not problems:
            problems += self._unscrubbed_damage(meta)
        return problems

    def _raw_file(self, meta: _Meta) -> ix.RawFile:
        return ix.RawFile(self._raw_path(meta), np.dtype(self._spec.raw_dtype), self._dim, meta.next_id)

    def _unscrubbed_damage(self, meta: _Meta) -> list[str]:
        left = self._unscrubbed(meta)
        if not left:
            return []
        return [
            f"{meta.raw_file} still holds the vectors of {len(left)} removed reference(s) (ids {left[:5]}"
            f"{' ...' if len(left) > 5 else ''})"
        ]

    def _snapshot_damage(self, meta: _Meta, deep: bool) -> list[str]:
        name = f"main.{meta.snap_gen}.faiss"
        size, expected = self._file_size(name), meta.facts.get("snap_bytes")
        if size == 0 or (expected is not None and size != expected):
            want = f"{expected} bytes" if expected is not None else "a non-empty file"
            return [f"{name} is {size} bytes where the commit wrote {want}: truncated or missing"]
        if deep:
            want = meta.facts.get("snap_digest")
            if want is not None and ix.file_digest(self.location / name) != want:
                return [f"{name} does not match its checksum: content damaged"]
            try:
                require("faiss").read_index(str(self.location / name))
            except (RuntimeError, OSError) as exc:
                return [f"{name} does not load: {str(exc).splitlines()[0]}"]
        return []

    def _damage_message(self, problems: list[str], reading: bool = False) -> str:
        what = "" if reading else ", nothing was written"
        return (
            f"the store at {self.location} is damaged{what}: {'; '.join(problems)}. "
            "Run `id2-plugin index verify --repair` (references whose vectors are lost are dropped; "
            "add them again)"
        )

    def verify(self) -> list[str]:
        """Every problem found in the committed store (SQLite's own check, file lengths, checksums, rows, the
        ANN snapshot loads); empty = sound."""
        with self._mutex:
            try:
                problems = ix.sqlite_damage(self._conn, DB_NAME)
                if problems:
                    return problems  # nothing read from a damaged database can be trusted
                with self._read_txn():
                    return self._damage(self._read_meta(), deep=True)
            except sqlite3.DatabaseError as exc:
                return [f"{DB_NAME} is unreadable: {exc}"]

    def repair(self) -> list[str]:
        """Make a damaged store writable again; returns what was done (empty: nothing was wrong).

        References whose vector rows are gone are dropped (``index add`` re-adds them), the raw file is
        restored to its committed length, and the ANN index is rebuilt from the raw vectors and SQLite.
        """
        try:
            return self._repair()
        except sqlite3.DatabaseError as exc:
            raise StoreDamagedError(self._unrepairable(f"{DB_NAME} is unreadable: {exc}")) from None

    def _unrepairable(self, problem: str) -> str:
        return (
            f"the store at {self.location} is damaged: {problem}; repair cannot rebuild the database: restore "
            f"{DB_NAME} from a backup or build the store again with `id2-plugin index add`"
        )

    def _repair(self) -> list[str]:
        with self._writing(check=False) as meta:
            sql = ix.sqlite_damage(self._conn, DB_NAME)
            if sql:
                raise StoreDamagedError(self._unrepairable(sql[0]))
            problems = self._damage(meta, deep=True)
            if not problems:
                return []
            done = self._drop_lost_rows(meta)
            meta = self._read_meta()
            done += self._drop_damaged_rows(meta)
            meta = self._read_meta()
            scrubbed = self._unscrubbed(meta)
            if scrubbed:
                meta = self._scrub_removed(meta, since=-1)
                done.append(f"overwrote the vectors of {len(scrubbed)} removed reference(s) with zeros")
            if self._maybe_merge(meta, force=True, rebuild=True) == "rebuild":
                done.append(f"rebuilt the {self._spec.kind} index from the {meta.count} stored vectors")
            with self._write_txn() as conn:
                ix.record_all(conn, self._raw_file(meta))
            self._state = None
            return done

    def _drop_damaged_rows(self, meta: _Meta) -> list[str]:
        """Remove the references whose vectors fail their checksum or the row check (lock held)."""
        ids = ix.scan(self._conn, self._raw_file(meta)).suspect_ids
        if not ids:
            return []
        uris: dict[int, str] = {}
        gen = meta.generation + 1
        with self._write_txn() as conn:
            for start in range(0, len(ids), _SQL_BATCH):
                part = ids[start : start + _SQL_BATCH]
                marks = ",".join("?" * len(part))
                uris.update(conn.execute(f"SELECT id, uri FROM refs WHERE id IN ({marks})", part).fetchall())
                conn.execute(f"DELETE FROM refs WHERE id IN ({marks})", part)
            # _drop_lost_rows ran first: the snapshot is gone, so nothing is in_main
            conn.executemany(
                "INSERT OR REPLACE INTO removed (id, generation, in_main) VALUES (?, ?, 0)", [(i, gen) for i in ids]
            )
            self._set_meta(conn, generation=gen, count=meta.count - len(ids))
        return [
            f"dropped {len(ids)} reference(s) whose vectors were damaged (cannot be recovered: add them "
            f"again): {ix.describe(ids, uris)}"
        ]

    def _drop_lost_rows(self, meta: _Meta) -> list[str]:
        """Remove references whose vectors the raw file lost and pad it back to the committed length."""
        cut = min(self._raw_rows_on_disk(meta), meta.next_id)
        lost = [r[0] for r in self._conn.execute("SELECT id FROM refs WHERE id >= ? ORDER BY id", (cut,))]
        gen = meta.generation + 1
        with self._write_txn() as conn:
            conn.execute("DELETE FROM refs WHERE id >= ?", (cut,))
            conn.executemany(
                "INSERT OR REPLACE INTO removed (id, generation, in_main) VALUES (?, ?, 0)", [(i, gen) for i in lost]
            )
            n = conn.execute("SELECT COUNT(*) FROM refs").fetchone()[0]
            # the snapshot is rebuilt next; everything is counted as buffered until then
            self._set_meta(
                conn, generation=gen, count=n, main_count=0, snap_gen=None, prev_snap_gen=None, snap_next_id=0
            )
        with open(self._raw_path(meta), "ab") as f:  # zero rows for the dropped ids, never read again
            f.truncate(meta.next_id * self._row_bytes())
            os.fsync(f.fileno())
        return (
            [
                f"dropped {len(lost)} reference(s) whose vectors were lost (ids {lost[:5]}{' ...' if len(lost) > 5 else ''})"
            ]
            if lost
            else []
        )

    def _write_raw(self, meta: _Meta, start: int, rows: np.ndarray) -> np.ndarray:
        """Write ``rows`` at row ``start`` (fsynced); returns them as written (the raw dtype)."""
        path = self._raw_path(meta)
        created = not path.exists()
        data = np.ascontiguousarray(rows, dtype=self._spec.raw_dtype)
        # Rows past the committed end may hold bytes of a crashed write: they are simply overwritten.
        with open(path, "r+b" if not created else "w+b") as f:
            f.seek(start * self._dim * data.itemsize)
            f.write(memoryview(data).cast("B"))
            f.flush()
            os.fsync(f.fileno())
        if created:
            _fsync_dir(self.location)
        return data

    def _removed_ids(self, since: int) -> list[int]:
        cur = self._conn.execute("SELECT id FROM removed WHERE generation > ? ORDER BY id", (since,))
        return [int(r[0]) for r in cur]

    def _unscrubbed(self, meta: _Meta) -> list[int]:
        """Removed ids whose raw row on disk is not all zeros."""
        rows = min(self._raw_rows_on_disk(meta), meta.next_id)
        ids = np.array([i for i in self._removed_ids(-1) if i < rows], dtype=np.int64)
        if not len(ids):
            return []
        raw = np.memmap(self._raw_path(meta), dtype=self._spec.raw_dtype, mode="r", shape=(rows, self._dim))
        return [int(i) for i in ids[np.any(raw[ids] != 0, axis=1)]]

    def _scrub_removed(self, meta: _Meta, since: int | None = None) -> _Meta:
        """Zero the raw rows of references removed after generation ``since`` (default: not yet scrubbed).

        Lock held. Returns the meta to continue with (re-read when the scrub was recorded).
        """
        since = int(meta.facts.get("scrubbed_gen", -1)) if since is None else since
        ids = self._removed_ids(since)
        if not ids:
            return meta
        _checkpoint("scrub:start")
        rows = min(self._raw_rows_on_disk(meta), meta.next_id)
        zero = bytes(self._row_bytes())
        with open(self._raw_path(meta), "r+b") as f:
            for i in ids:
                if i < rows:
                    f.seek(i * len(zero))
                    f.write(zero)
            f.flush()
            os.fsync(f.fileno())
        with self._write_txn() as conn:
            self._set_meta(conn, facts={**meta.facts, "scrubbed_gen": meta.generation})
        return self._read_meta()

    def _open_raw(self, meta: _Meta) -> np.ndarray | None:
        if meta.next_id == 0:
            return None
        path = self._raw_path(meta)
        try:
            raw = np.memmap(path, dtype=self._spec.raw_dtype, mode="r", shape=(meta.next_id, self._dim))
        except (OSError, ValueError) as exc:
            raise StoreDamagedError(
                self._damage_message([f"{meta.raw_file} is missing or truncated ({exc})"])
            ) from None
        _advise_random(raw)
        return raw

    @staticmethod
    def _fetch(raw: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        def fetch(ids: np.ndarray) -> np.ndarray:
            ids = np.asarray(ids, dtype=np.int64)
            if len(ids) and ids[-1] - ids[0] + 1 == len(ids):  # contiguous: a read avoids a gather
                return _read_rows(raw, int(ids[0]), len(ids))
            return np.asarray(raw[ids], dtype=np.float32)

        return fetch

    def _live_ids(self, conn: sqlite3.Connection, lo: int, hi: int) -> np.ndarray:
        cur = conn.execute("SELECT id FROM refs WHERE id >= ? AND id < ? ORDER BY id", (lo, hi))
        return np.fromiter((r[0] for r in cur), dtype=np.int64)

    # -- in-memory state ---------------------------------------------------------------------------------
    def _new_buffer(self) -> Any:
        kind = self._spec.kind if self._spec.kind in ("flat", "flat_fp16") else "flat"
        return fx.new_exact_index(kind, self._dim)

    def _fill(self, index: Any, ids: np.ndarray, raw: np.ndarray | None) -> None:
        if raw is None or not len(ids):
            return
        fetch = self._fetch(raw)
        for start in range(0, len(ids), _CHUNK):
            part = ids[start : start + _CHUNK]
            x = np.ascontiguousarray(fetch(part))
            self._refuse_bad_rows(x, part, "the vectors of reference(s)")
            index.add_with_ids(x, part)

    def _refuse_bad_rows(self, x: np.ndarray, ids: np.ndarray, what: str, allow_zero: bool = False) -> None:
        """The cheap check at load: a damaged row would score cosines far above 1, i.e. a false match."""
        bad = ix.bad_rows(x, allow_zero)
        if len(bad):
            found = f"{what} {ids[bad][:5].tolist()} are not unit vectors: content damaged"
            raise StoreDamagedError(self._damage_message([found], reading=True))

    def _apply_removals(self, state: _State, ids: np.ndarray) -> None:
        if not len(ids):
            return
        in_main = ids[ids < state.snap_next_id]
        in_buffer = ids[ids >= state.snap_next_id]
        if len(in_buffer) and state.buffer.ntotal:
            state.buffer.remove_ids(np.ascontiguousarray(in_buffer))
        if len(in_main) and state.main is not None:
            if self._spec.kind == "hnsw":
                state.tombstones.update(int(i) for i in in_main)
                state.selector = fx.exclusion_selector(np.fromiter(state.tombstones, dtype=np.int64))
            else:
                state.main.remove_ids(np.ascontiguousarray(in_main))

    def _load(self, conn: sqlite3.Connection, meta: _Meta) -> _State:
        """Full load of the committed generation described by ``meta``."""
        faiss = require("faiss")
        raw = self._open_raw(meta)
        main = None
        if meta.snap_gen is not None:
            path = self.location / f"main.{meta.snap_gen}.faiss"
            main = faiss.read_index(str(path))  # FileNotFoundError is retried by the caller
            if self._spec.kind == "hnsw" and main.ntotal:  # removed references stay as zeroed tombstones
                self._refuse_bad_rows(
                    fx.hnsw_vectors(main),
                    faiss.vector_to_array(main.id_map),
                    f"in main.{meta.snap_gen}.faiss the vectors of reference(s)",
                    allow_zero=True,
                )
        state = _State(
            generation=meta.generation,
            epoch=(meta.raw_file, meta.snap_gen),
            next_id=meta.next_id,
            snap_next_id=meta.snap_next_id,
            main=main,
            buffer=self._new_buffer(),
            raw=raw,
            search_params=dict(meta.search_params),
        )
        self._fill(state.buffer, self._live_ids(conn, meta.snap_next_id, meta.next_id), raw)
        if main is not None:
            gone = conn.execute(
                "SELECT id FROM removed WHERE generation > ? AND in_main = 1 ORDER BY id", (meta.clean_gen,)
            ).fetchall()
            self._apply_removals(state, np.array([r[0] for r in gone], dtype=np.int64))
        return state

    def _catch_up(self, conn: sqlite3.Connection, state: _State, meta: _Meta) -> None:
        """Bring ``state`` (same epoch) to ``meta.generation``: new rows into the buffer, apply removals."""
        raw = self._open_raw(meta)
        new_ids = self._live_ids(conn, state.next_id, meta.next_id)
        self._fill(state.buffer, new_ids, raw)
        gone = conn.execute(
            "SELECT id FROM removed WHERE generation > ? AND generation <= ? ORDER BY id",
            (state.generation, meta.generation),
        ).fetchall()
        self._apply_removals(state, np.array([r[0] for r in gone], dtype=np.int64))
        state.raw = raw
        state.next_id = meta.next_id
        state.generation = meta.generation
        state.search_params = dict(meta.search_params)

    def _current(self, conn: sqlite3.Connection) -> _State:
        """The in-memory state at the generation visible in ``conn``'s read snapshot (cheap if unchanged)."""
        gen = self._generation()
        state = self._state
        if state is not None and state.generation == gen:
            return state
        meta = self._read_meta()
        if state is not None and state.epoch == (meta.raw_file, meta.snap_gen) and state.generation < gen:
            self._catch_up(conn, state, meta)
            return state
        self._state = None  # free the old index before loading the new one
        self._state = self._load(conn, meta)
        return self._state

    def _with_current(self, fn: Callable[[sqlite3.Connection, _State], Any]) -> Any:
        """Run ``fn`` on the current state inside one read snapshot of the database.

        Loading retries when a writer deleted a snapshot file between our reading the meta and opening the
        file (two merges in quick succession): the next attempt sees the newer generation.
        """
        with self._mutex:
            for attempt in range(8):
                try:
                    with self._read_txn() as conn:
                        try:
                            state = self._current(conn)
                        except (FileNotFoundError, RuntimeError) as exc:
                            self._state = None
                            if attempt == 7:
                                raise StoreError(f"cannot load the store at {self.location}: {exc}") from exc
                            time.sleep(0.01 * (attempt + 1))
                            continue
                        except BaseException:
                            self._state = None  # a half-applied catch-up must not be reused
                            raise
                        return fn(conn, state)
                except sqlite3.Error as exc:
                    raise StoreError(f"reading the store at {self.location} failed: {exc}") from exc
        raise AssertionError("unreachable")

    # -- search --------------------------------------------------------------------------------------------
    def _effective_search(self, tuned: dict[str, Any], nlist: int | None) -> dict[str, Any]:
        """nprobe / efSearch / rerank: explicit option > tuned value saved in the store > default."""
        opts = self._spec.options
        out: dict[str, Any] = {}
        if self._spec.trained and nlist is None:
            out["nprobe"] = opts["nprobe"]  # not trained yet: the setting applies once it is
        elif self._spec.trained:
            assert nlist is not None
            if "nprobe" in self._explicit_search or "nprobe" not in tuned:
                out["nprobe"] = self._spec.nprobe_for(nlist)
            else:
                out["nprobe"] = max(1, min(int(tuned["nprobe"]), nlist))
        if self._spec.kind == "hnsw":
            use_tuned = "efSearch" in tuned and "efSearch" not in self._explicit_search
            out["efSearch"] = int(tuned["efSearch"] if use_tuned else opts["efSearch"])
        if "rerank" in opts:
            use_tuned = "rerank" in tuned and "rerank" not in self._explicit_search
            out["rerank"] = int(tuned["rerank"] if use_tuned else opts["rerank"])
        return out

    def _state_search(self, state: _State) -> dict[str, Any]:
        ivf = fx.ivf_of(state.main) if state.main is not None and self._spec.trained else None
        return self._effective_search(state.search_params, int(ivf.nlist) if ivf is not None else None)

    def _search_main(
        self, state: _State, q: np.ndarray, k: int, params: dict[str, Any]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Search the ANN index; with ``rerank`` re-score ``rerank * max(k, 10)`` candidates from the raw vectors."""
        fetch = self._fetch(state.raw) if state.raw is not None else None
        return fx.ann_search(
            state.main,
            self._spec.kind,
            q,
            k,
            nprobe=params.get("nprobe"),
            ef_search=params.get("efSearch"),
            rerank=params.get("rerank", 0),
            fetch=fetch,
            selector=state.selector,
        )

    def _search(
        self, state: _State, q: np.ndarray, k: int, params: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, ids) over the ANN index and the exact buffer, merged; missing = (-inf, -1)."""
        params = self._state_search(state) if params is None else params
        parts: list[tuple[np.ndarray, np.ndarray]] = []
        with fx.faiss_threads(fx.threads_for(len(q), self._spec.options)):
            if state.main is not None and state.main.ntotal:
                parts.append(self._search_main(state, q, k, params))
            if state.buffer.ntotal:
                k_buf = min(k, state.buffer.ntotal)
                parts.append(fx.exact_search(state.buffer, q, k_buf, int(self._spec.options["blas_min_batch"])))
        if not parts:
            return np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)
        D = np.concatenate([p[0] for p in parts], axis=1).astype(np.float32)
        I = np.concatenate([p[1] for p in parts], axis=1).astype(np.int64)
        D = np.where(I >= 0, D, -np.inf)
        # PQ scores without re-ranking are approximations that may overshoot: clipped, not refused
        over = ix.over_bound(D, q, clip_only=self._spec.kind in fx.PQ_TYPES and not params.get("rerank"))
        if over is not None:
            found = f"reference {int(I[over[0]])} scores a cosine of {over[1]:.4g}: its vector is damaged"
            raise StoreDamagedError(self._damage_message([found], reading=True))
        order = np.argsort(-D, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(D, order, 1), np.take_along_axis(I, order, 1)

    def _check_vectors(self, vectors: np.ndarray) -> np.ndarray:
        v = np.asarray(vectors, dtype=np.float32)
        if v.ndim == 1:
            v = v[None]
        if v.ndim != 2 or v.shape[1] != self._dim:
            raise IncompatibleStoreError(
                f"vectors of shape {tuple(np.shape(vectors))} do not match the store's dimension {self._dim}"
            )
        if not np.isfinite(v).all():
            raise ValueError("vectors contain NaN or infinity")
        return np.ascontiguousarray(v)

    @staticmethod
    def _match_fields(conn: sqlite3.Connection, ids: np.ndarray) -> dict[int, tuple[str, str, str, tuple[str, ...]]]:
        """(reference id, uri, sha256, labels) of each live id in ``ids`` (missing = -1 and removed ids are absent)."""
        wanted = np.unique(ids[ids >= 0]).tolist()
        out: dict[int, tuple[str, str, str, tuple[str, ...]]] = {}
        for start in range(0, len(wanted), _SQL_BATCH):
            part = wanted[start : start + _SQL_BATCH]
            marks = ",".join("?" * len(part))
            rows = conn.execute(f"SELECT id, sha256, uri, labels FROM refs WHERE id IN ({marks})", part).fetchall()
            out.update((rid, (str(rid), uri, sha, _labels(labels))) for rid, sha, uri, labels in rows)
        return out

    def query(self, vectors: np.ndarray, k: int = 5, threshold: float | None = None) -> list[list[Match]]:
        """Up to ``k`` matches per query vector, best first (rank 1), at the latest committed generation."""
        q = self._check_vectors(vectors)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")

        def run(conn: sqlite3.Connection, state: _State) -> list[list[Match]]:
            D, I = self._search(state, q, k)
            # Only matches that can be returned need their metadata: with a threshold most candidates are
            # dropped before the SQLite lookup, which is the larger part of a batched query's cost.
            refs = self._match_fields(conn, I if threshold is None else np.where(D >= np.float64(threshold), I, -1))
            out: list[list[Match]] = []
            # Python lists, not numpy scalars: at thousands of queries per second the per-match loop is most of
            # a batched lookup's time (benchmarks/scale.py)
            for d_row, i_row in zip(D.tolist(), I.tolist()):
                matches: list[Match] = []
                for score, rid in zip(d_row, i_row):
                    fields = refs.get(rid)
                    if fields is None or (threshold is not None and score < threshold):
                        continue
                    matches.append(Match.ranked(fields[0], fields[1], score, len(matches) + 1, fields[2], fields[3]))
                out.append(matches)
            return out

        return self._with_current(run)  # type: ignore[no-any-return]

    def fetch_vectors(self, reference_ids: Sequence[str]) -> np.ndarray | None:
        """Stored rows of ``reference_ids`` at the latest committed generation (float32)."""
        ids = np.array([int(r) for r in reference_ids], dtype=np.int64)

        def run(conn: sqlite3.Connection, state: _State) -> np.ndarray:
            if len(ids) and (
                state.raw is None or ids.min() < 0 or ids.max() >= state.next_id or not self._all_live(conn, ids)
            ):
                raise StoreError(f"unknown reference id among {list(reference_ids)[:5]}")
            return np.asarray(state.raw[ids], dtype=np.float32) if len(ids) else np.zeros((0, self._dim), np.float32)

        return self._with_current(run)  # type: ignore[no-any-return]

    @staticmethod
    def _all_live(conn: sqlite3.Connection, ids: np.ndarray) -> bool:
        wanted = sorted({int(i) for i in ids})
        found = 0
        for start in range(0, len(wanted), _SQL_BATCH):
            part = wanted[start : start + _SQL_BATCH]
            found += conn.execute(
                f"SELECT COUNT(*) FROM refs WHERE id IN ({','.join('?' * len(part))})", part
            ).fetchone()[0]
        return found == len(wanted)

    # -- writes ----------------------------------------------------------------------------------------------
    def _known(self, conn: sqlite3.Connection, shas: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(shas), _SQL_BATCH):
            part = list(shas[start : start + _SQL_BATCH])
            marks = ",".join("?" * len(part))
            found.update(r[0] for r in conn.execute(f"SELECT sha256 FROM refs WHERE sha256 IN ({marks})", part))
        return found

    def contains(self, sha256s: Sequence[str]) -> list[bool]:
        with self._mutex:
            try:
                known = self._known(self._conn, [s for s in sha256s if s])
            except sqlite3.Error as exc:
                raise StoreError(f"reading the store at {self.location} failed: {exc}") from exc
        return [bool(s) and s in known for s in sha256s]

    def add(self, vectors: np.ndarray, records: Sequence[ReferenceRecord]) -> AddResult:
        """Append new references (skipping sha256s already stored or repeated in the batch) and commit.

        Reference ids are assigned by the store (consecutive integers, never reused; ``record.reference_id``
        is ignored). Streams: memory use is the batch plus, for IVF/HNSW, the index being maintained; call
        it once per batch for bulk loads (an interrupted bulk load re-run with the same inputs adds only
        what is missing, because duplicates are detected by sha256).
        """
        if self._opened_identity is None:
            raise StoreError(
                "this store handle was opened without an embedder identity; open it with the "
                "embedder's identity to add references"
            )
        v = self._check_vectors(vectors)
        if len(records) != len(v):
            raise ValueError(f"{len(v)} vectors but {len(records)} records")
        for r in records:
            if not r.sha256:
                raise ValueError(f"record for {r.uri!r} has no sha256")
        bad = ix.bad_rows(v)
        if len(bad):
            raise ValueError(f"vector {int(bad[0])} is not L2-normalised (norm {float(np.linalg.norm(v[bad[0]])):.4g})")
        with self._writing() as meta:
            first: dict[str, int] = {}
            duplicates: list[str] = []
            for i, r in enumerate(records):
                if r.sha256 in first:
                    duplicates.append(r.sha256)
                else:
                    first[r.sha256] = i
            known = self._known(self._conn, list(first))
            keep = [i for sha, i in first.items() if sha not in known]
            duplicates.extend(sha for sha in first if sha in known)
            if not keep:
                return AddResult(added=(), duplicates=tuple(duplicates))
            start = meta.next_id
            ids = list(range(start, start + len(keep)))
            written = self._write_raw(meta, start, v[keep])
            _checkpoint("add:raw_written")
            gen = meta.generation + 1
            now = _now()
            with self._write_txn() as conn:
                conn.executemany(
                    "INSERT INTO refs (id, sha256, uri, added_at, labels, generation) VALUES (?, ?, ?, ?, ?, ?)",
                    [
                        (
                            rid,
                            records[i].sha256,
                            records[i].uri,
                            records[i].added_at or now,
                            json.dumps(list(records[i].labels)),
                            gen,
                        )
                        for rid, i in zip(ids, keep)
                    ],
                )
                ix.append(conn, self._raw_file(meta), start, written)
                _checkpoint("add:before_commit")
                self._set_meta(conn, generation=gen, next_id=start + len(keep), count=meta.count + len(keep))
            _checkpoint("add:committed")
            self._maybe_merge(self._read_meta())
        return AddResult(added=tuple(str(i) for i in ids), duplicates=tuple(duplicates))

    def _resolve(self, conn: sqlite3.Connection, keys: Sequence[str]) -> set[int]:
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

    def remove(self, keys: Sequence[str]) -> int:
        """Remove references by reference id or sha256; unknown keys are ignored. Returns how many went."""
        with self._writing() as meta:
            ids = sorted(self._resolve(self._conn, keys))
            if not ids:
                return 0
            gen = meta.generation + 1
            in_main = sum(1 for i in ids if i < meta.snap_next_id)
            with self._write_txn() as conn:
                for start in range(0, len(ids), _SQL_BATCH):
                    part = ids[start : start + _SQL_BATCH]
                    conn.execute(f"DELETE FROM refs WHERE id IN ({','.join('?' * len(part))})", part)
                # in_main: the id sits in the ANN index (an HNSW graph keeps it as a tombstone until rebuilt)
                conn.executemany(
                    "INSERT OR REPLACE INTO removed (id, generation, in_main) VALUES (?, ?, ?)",
                    [(i, gen, int(i < meta.snap_next_id)) for i in ids],
                )
                _checkpoint("remove:before_commit")
                self._set_meta(conn, generation=gen, count=meta.count - len(ids), main_count=meta.main_count - in_main)
            meta = self._scrub_removed(self._read_meta())
            self._drop_from_snapshot(meta, in_main > 0)
        return len(ids)

    def _drop_from_snapshot(self, meta: _Meta, touched: bool) -> None:
        """After a removal: merge by policy, and when the snapshot on disk held a removed vector, replace it
        now and delete the old file (readers that still open it retry on the new generation)."""
        plan = self._maybe_merge(meta)
        if not touched or meta.snap_gen is None:
            return
        if plan is None:
            self._merge(meta, "fold")
        prev = self._read_meta().prev_snap_gen
        if prev is not None:
            (self.location / f"main.{prev}.faiss").unlink(missing_ok=True)

    # -- merge / rebuild ------------------------------------------------------------------------------------
    def _tombstone_count(self, meta: _Meta) -> int:
        if self._spec.kind != "hnsw" or meta.snap_gen is None:
            return 0
        row = self._conn.execute(
            "SELECT COUNT(*) FROM removed WHERE generation > ? AND in_main = 1", (meta.clean_gen,)
        ).fetchone()
        return int(row[0])

    def _merge_plan(self, meta: _Meta, force: bool = False, rebuild: bool = False) -> str | None:
        """None, ``"fold"`` (add the buffer to the ANN index) or ``"rebuild"`` (train / rebuild from raw)."""
        spec = self._spec
        if not spec.snapshot or meta.count == 0:
            return None
        if spec.trained and meta.count < spec.train_min:
            return None  # too few vectors to train: searches stay exact
        if meta.snap_gen is None or rebuild:
            return (
                "rebuild"
                if (force or rebuild or meta.count - meta.main_count >= spec.options["merge_min"] or spec.trained)
                else None
            )
        if spec.trained:
            growth = float(spec.options["retrain_growth"])
            trained_on = int(meta.facts.get("trained_on", meta.trained_count))
            cap = int(spec.options["max_train_per_list"]) * spec.nlist_for(meta.count)
            auto = spec.options["nlist"] == "auto"
            if growth > 0 and meta.count >= growth * max(meta.trained_count, 1) and (auto or trained_on < cap):
                return "rebuild"
        else:
            tomb = self._tombstone_count(meta)
            if tomb and tomb >= float(spec.options["tombstone_ratio"]) * (meta.main_count + tomb):
                return "rebuild"
        buffered = meta.count - meta.main_count
        threshold = max(int(spec.options["merge_min"]), float(spec.options["merge_ratio"]) * meta.main_count)
        if buffered > 0 and (force or buffered >= threshold):
            return "fold"
        return None

    def _maybe_merge(self, meta: _Meta, force: bool = False, rebuild: bool = False) -> str | None:
        plan = self._merge_plan(meta, force=force, rebuild=rebuild)
        if plan is not None:
            self._merge(meta, plan)
        return plan

    def _merge(self, meta: _Meta, plan: str) -> None:
        """Fold the buffer into (or rebuild) the ANN index, write a snapshot, commit (lock held)."""
        faiss = require("faiss")
        gen = meta.generation + 1
        facts = dict(meta.facts)
        trained_count = meta.trained_count
        with self._read_txn() as conn:
            if plan == "rebuild":
                self._state = None  # free the old index first: peak memory = one index
                raw = self._open_raw(meta)
                ids = self._live_ids(conn, 0, meta.next_id)
                assert raw is not None
                main, new_facts = fx.build_ann_index(self._spec, ids, self._fetch(raw), progress=True)
                facts.update(new_facts)
                trained_count = meta.count
                clean_gen = gen
                state = _State(
                    generation=meta.generation,
                    epoch=("", None),
                    next_id=meta.next_id,
                    snap_next_id=meta.next_id,
                    main=main,
                    buffer=self._new_buffer(),
                    raw=raw,
                    search_params=dict(meta.search_params),
                )
            else:
                state = self._current(conn)
                buf_ids = self._live_ids(conn, meta.snap_next_id, meta.next_id)
                self._fill(state.main, buf_ids, state.raw)
                if self._spec.kind == "hnsw":
                    fx.zero_stored_vectors(state.main, state.tombstones)
                # IVF deletes physically, so the snapshot is clean; an HNSW graph keeps its tombstones.
                clean_gen = meta.clean_gen if self._spec.kind == "hnsw" else gen
        tmp = self.location / f"main.{gen}.faiss.tmp"
        final = self.location / f"main.{gen}.faiss"
        faiss.write_index(state.main, str(tmp))
        _fsync_file(tmp)
        facts["snap_bytes"] = tmp.stat().st_size  # lets every later write and `info` detect a truncated snapshot
        facts["snap_digest"] = ix.file_digest(tmp)  # read back: what the disk holds, checked by `verify`
        _checkpoint("merge:tmp_written")
        os.replace(tmp, final)
        _fsync_dir(self.location)
        _checkpoint("merge:renamed")
        with self._write_txn() as conn:
            self._set_meta(
                conn,
                generation=gen,
                snap_gen=gen,
                prev_snap_gen=meta.snap_gen,
                snap_next_id=meta.next_id,
                main_count=meta.count,
                clean_gen=clean_gen,
                trained_count=trained_count,
                facts=facts,
            )
        _checkpoint("merge:committed")
        # Keep the fresh index in memory: it is exactly what the new generation describes.
        state.generation = gen
        state.epoch = (meta.raw_file, gen)
        state.snap_next_id = meta.next_id
        state.buffer = self._new_buffer()
        if plan == "rebuild":
            state.tombstones, state.selector = set(), None
        self._state = state
        self._cleanup(self._read_meta())

    def compact(self, rebuild: bool = False) -> str | None:
        """Fold the exact buffer into the ANN index now (``rebuild``: retrain / rebuild it from raw vectors).

        Returns what was done (``"fold"``, ``"rebuild"``) or None (flat index, or too few vectors to train).
        """
        with self._writing() as meta:
            return self._maybe_merge(meta, force=True, rebuild=rebuild)

    def save_search_params(self, params: dict[str, Any], tuned: dict[str, Any] | None = None) -> None:
        """Persist search-time parameters (e.g. the tuned ``nprobe``); readers pick them up on their next query."""
        with self._writing() as meta:
            with self._write_txn() as conn:
                self._set_meta(
                    conn, generation=meta.generation + 1, search_params={**meta.search_params, **params}, tuned=tuned
                )
        self._explicit_search -= set(params)

    # -- info ---------------------------------------------------------------------------------------------------
    def info(self) -> StoreInfo:
        """Summary from the committed metadata (cheap: the index is not loaded)."""
        with self._mutex:
            try:
                with self._read_txn():
                    meta = self._read_meta()
                    tombstones = self._tombstone_count(meta)
                    damage = self._damage(meta)
            except sqlite3.Error as exc:
                raise StoreError(f"reading the store at {self.location} failed: {exc}") from exc
        spec = self._spec
        buffered = int(meta.count - meta.main_count)
        indexed = meta.snap_gen is not None
        extra: dict[str, Any] = {
            "index_options": dict(spec.options),
            "search_params": self._effective_search(meta.search_params, meta.facts.get("nlist") if indexed else None),
            "tuned": meta.tuned,
            "indexed": int(meta.main_count),
            "exact_buffer": buffered,
            "raw_dtype": str(spec.raw_dtype),
            "disk_bytes": sum(self._file_size(p.name) for p in self.location.iterdir()),  # racing deletes count 0
            "raw_bytes": self._file_size(meta.raw_file),
            "index_bytes": self._file_size(f"main.{meta.snap_gen}.faiss") if indexed else 0,
            "created_at": meta.created_at,
            "format_version": FORMAT_VERSION,
            "status": "damaged: " + "; ".join(damage) if damage else "ok",
        }
        if spec.kind in ("flat", "flat_fp16"):
            extra["search"] = "exact"
        elif not indexed:
            why = (
                f"untrained: {meta.count} < train_min {spec.train_min}"
                if spec.trained
                else f"graph not built yet: {meta.count} < merge_min {spec.options['merge_min']}"
            )
            extra["search"] = f"exact ({why})"
        else:
            extra["search"] = f"approximate {spec.kind} over {meta.main_count} + exact buffer of {buffered}"
        if spec.trained:
            extra["trained"] = indexed
            extra["train_min"] = spec.train_min
            extra.update({k: meta.facts[k] for k in ("nlist", "m", "nbits", "trained_on") if k in meta.facts})
        if spec.kind == "hnsw":
            extra["tombstones"] = tombstones
        return StoreInfo(
            backend=self.backend,
            location=str(self.location),
            count=int(meta.count),
            dim=self._dim,
            embedder=self._embedder,
            index_type=spec.kind,
            generation=int(meta.generation),
            extra=extra,
        )

    def _file_size(self, name: str) -> int:
        """Size of a store file; 0 if it is gone (a writer may delete superseded files at any time)."""
        try:
            st = (self.location / name).stat()
        except OSError:
            return 0
        return st.st_size if stat.S_ISREG(st.st_mode) else 0

    # -- the view `index tune` measures ------------------------------------------------------------------
    @contextmanager
    def tuning_view(self) -> Iterator[TuningView]:
        """The current ANN index held still (not refreshed) while a caller measures it."""
        with self._mutex:

            def run(conn: sqlite3.Connection, state: _State) -> TuningView:
                ids = self._live_ids(conn, 0, state.snap_next_id) if state.main is not None else np.zeros(0, np.int64)
                raw = state.raw if state.raw is not None else np.zeros((0, self._dim), np.float32)
                params = self._state_search(state) if state.main is not None else {}
                return TuningView(
                    state.main, ids, self._fetch(raw), params, lambda q, k, p: self._search_main(state, q, k, p)
                )

            yield self._with_current(run)
