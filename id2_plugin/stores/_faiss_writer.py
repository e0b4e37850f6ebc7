"""The single writer of a FAISS store: creating a store atomically, the write lock and the checks every
write starts with, deleting files no committed generation references, and zeroing removed references' rows.

**Commit protocol.** The SQLite meta row ``generation`` is the single commit point. A writer (holding
``write.lock``) first appends the new rows to the raw vector file past the committed end and fsyncs it,
or writes a new index snapshot to a temp file, fsyncs and renames it to ``main.<new generation>.faiss``;
only then does one SQLite transaction insert the reference rows and advance ``generation``/``next_id``/
the snapshot pointer. A crash before that transaction leaves bytes nobody references (deleted by the next
writer); a crash after it loses nothing.

**Removal.** A removed reference's raw row is overwritten with zeros right after the removal commits; the
generation up to which that was done is kept in ``facts["scrubbed_gen"]``, so a crash in between is
finished by the next writer. What the file system or device keeps of overwritten or deleted blocks
(copy-on-write file systems, SSD wear levelling, backups) is beyond the store's reach.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .._lazy import require
from ..errors import StoreDamagedError, StoreError
from . import _faiss_metadata as md
from . import _integrity as ix
from ._faiss_index import IndexSpec
from ._faiss_reader import Reader
from ._faiss_vectors import VectorFile, fsync_dir, fsync_file
from ._faiss_verify import StoreChecks

LOCK_NAME = "write.lock"

#: Fault-injection seam for the crash tests: called with a stage name at each step of a commit.
fault_hook: Callable[[str], None] | None = None


def checkpoint(stage: str) -> None:
    if fault_hook is not None:
        fault_hook(stage)


def _remove_db_temps(location: Path) -> None:
    for p in location.glob(f"{md.DB_NAME}.*.tmp*"):
        p.unlink(missing_ok=True)


def create_store(location: Path, spec: IndexSpec, embedder_identity: str) -> None:
    """Create the store atomically: the database appears under its final name fully initialised."""
    db_path = location / md.DB_NAME
    if location.exists() and not location.is_dir():
        raise StoreError(f"{location} exists and is not a directory")
    location.mkdir(parents=True, exist_ok=True)
    foreign = [p.name for p in location.iterdir() if p.name != LOCK_NAME and not p.name.startswith(md.DB_NAME)]
    if foreign and not db_path.exists():
        raise StoreError(f"{location} is not empty and is not an id2 reference store ({foreign[0]}, ...)")
    filelock = require("filelock")
    lock = filelock.FileLock(str(location / LOCK_NAME))
    try:
        lock.acquire(timeout=float(spec.options["lock_timeout"]))
    except filelock.Timeout:
        raise StoreError(f"timed out waiting for the write lock of {location}") from None
    try:
        if db_path.exists():  # another process created it while we waited
            return
        _remove_db_temps(location)  # left by a creator that failed or was killed: we hold the lock
        tmp = location / f"{md.DB_NAME}.{os.getpid()}.tmp"
        try:
            md.init_db(tmp, spec, embedder_identity)
            fsync_file(tmp)
            os.replace(tmp, db_path)
            fsync_dir(location)
        except (OSError, sqlite3.Error) as exc:
            _remove_db_temps(location)
            raise StoreError(f"creating the store at {location} failed (is the disk full?): {exc}") from None
    finally:
        lock.release()


def cleanup(location: Path, meta: md.Meta) -> None:
    """Delete files no committed generation references (left by a crashed or superseded writer; lock held).

    The previous snapshot survives only until the next commit after the merge that replaced it, so a
    reader that read the older generation just before the merge can still open it.
    """
    keep_snaps = {meta.snap_gen}
    if meta.generation == meta.snap_gen:
        keep_snaps.add(meta.prev_snap_gen)
    for p in location.iterdir():
        name = p.name
        failed_create = name.startswith(f"{md.DB_NAME}.") and ".tmp" in name
        if (name.endswith(".tmp") and not name.startswith(md.DB_NAME)) or failed_create:
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


class Writer:
    """Serialises this handle's writes with every other writer's (``write.lock``, waited for up to
    ``timeout`` seconds) and with its own threads (``mutex``)."""

    def __init__(
        self,
        db: md.Database,
        vectors: VectorFile,
        checks: StoreChecks,
        reader: Reader,
        mutex: threading.RLock,
        timeout: float,
    ) -> None:
        self.db = db
        self.vectors = vectors
        self.checks = checks
        self.reader = reader
        self.mutex = mutex
        self.timeout = timeout
        self.location = vectors.location
        self.flock = self._new_lock()

    def _new_lock(self) -> Any:
        return require("filelock").FileLock(str(self.location / LOCK_NAME))

    def reset_lock(self) -> None:
        """A fresh lock handle (a forked child must not use its parent's)."""
        self.flock = self._new_lock()

    @contextmanager
    def writing(self, check: bool = True) -> Iterator[md.Meta]:
        """Hold the store's write lock; yields the latest committed meta. Errors drop the cached index.

        With ``check`` a store whose files are shorter than the committed meta says is refused before
        anything is written, and the rows of references removed by a writer that died are zeroed first.
        """
        filelock = require("filelock")
        with self.mutex:
            self.db.follow_fork()  # before the lock: a child must not acquire the lock handle it inherited
            try:
                self.flock.acquire(timeout=self.timeout)
            except filelock.Timeout:
                raise StoreError(
                    f"the store at {self.location} is locked by another writer (waited {self.timeout:g} s); "
                    "retry later or raise store.index_options.lock_timeout"
                ) from None
            try:
                self.db.conn.execute(ix.SCHEMA)
                meta = self.db.read_meta()
                problems = self.checks.damage(meta) if check else []
                if problems:
                    raise StoreDamagedError(ix.damage_message(self.location, problems))
                cleanup(self.location, meta)
                yield self.scrub_removed(meta) if check else meta
            except StoreError:
                self.reader.state = None
                raise
            except (OSError, sqlite3.Error) as exc:
                self.reader.state = None
                raise StoreError(f"writing to the store at {self.location} failed: {exc}") from exc
            except BaseException:
                self.reader.state = None
                raise
            finally:
                self.flock.release()

    def scrub_removed(self, meta: md.Meta, since: int | None = None) -> md.Meta:
        """Zero the raw rows of references removed after generation ``since`` (default: not yet scrubbed).

        Lock held. Returns the meta to continue with (re-read when the scrub was recorded).
        """
        since = int(meta.facts.get("scrubbed_gen", -1)) if since is None else since
        ids = self.db.removed_ids(since)
        if not ids:
            return meta
        checkpoint("scrub:start")
        self.vectors.zero(meta, ids)
        with self.db.write_txn() as conn:
            md.set_meta(conn, facts={**meta.facts, "scrubbed_gen": meta.generation})
        return self.db.read_meta()
