"""Finding what is wrong with the committed files of a FAISS store.

The cheap checks (file lengths against the committed meta, SQLite rows against the generation) run before
every write and in ``info``: appending at the committed end of a truncated file would zero-fill the gap.
The deep check behind ``index verify`` adds SQLite's own integrity check, the checksums and row norms of
the raw vectors, the snapshot's digest and that it loads, and that removed references' rows are zeros.
"""

from __future__ import annotations

import sqlite3

from .._lazy import require
from . import _integrity as ix
from ._faiss_metadata import DB_NAME, Database, Meta
from ._faiss_vectors import VectorFile, file_size


class StoreChecks:
    """The checks of one store's files: its database and raw vector file, and the snapshots beside them."""

    def __init__(self, db: Database, vectors: VectorFile) -> None:
        self.db = db
        self.vectors = vectors
        self.location = vectors.location

    def damage(self, meta: Meta, deep: bool = False) -> list[str]:
        """What is wrong with the files of the committed generation ``meta`` (empty: nothing found);
        ``deep`` also reads every row and loads the ANN snapshot."""
        problems: list[str] = []
        rows = self.vectors.rows_on_disk(meta)
        if rows < meta.next_id:
            problems.append(
                f"{meta.raw_file} holds {rows} of the {meta.next_id} committed vectors "
                f"({file_size(self.location, meta.raw_file)} of {meta.next_id * self.vectors.row_bytes} bytes): "
                "truncated or missing"
            )
        n, top = self.db.conn.execute("SELECT COUNT(*), MAX(id) FROM refs").fetchone()
        if n != meta.count or (top is not None and top >= meta.next_id):
            problems.append(
                f"the database lists {n} references (highest id {top}) but generation "
                f"{meta.generation} committed {meta.count} below id {meta.next_id}"
            )
        if meta.snap_gen is not None:
            problems += self._snapshot_damage(meta, deep)
        if deep and rows >= meta.next_id:
            problems += ix.scan(self.db.conn, self.vectors.checked(meta)).problems(meta.raw_file)
        if deep and not problems:
            problems += self._unscrubbed_damage(meta)
        return problems

    def unscrubbed(self, meta: Meta) -> list[int]:
        """Removed ids whose raw row on disk is not all zeros."""
        return self.vectors.nonzero(meta, self.db.removed_ids(-1))

    def _unscrubbed_damage(self, meta: Meta) -> list[str]:
        left = self.unscrubbed(meta)
        if not left:
            return []
        return [
            f"{meta.raw_file} still holds the vectors of {len(left)} removed reference(s) (ids {left[:5]}"
            f"{' ...' if len(left) > 5 else ''})"
        ]

    def _snapshot_damage(self, meta: Meta, deep: bool) -> list[str]:
        name = f"main.{meta.snap_gen}.faiss"
        size, expected = file_size(self.location, name), meta.facts.get("snap_bytes")
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

    def verify(self) -> list[str]:
        """Every problem found in the committed store; empty = sound."""
        try:
            problems = ix.sqlite_damage(self.db.conn, DB_NAME)
            if problems:
                return problems  # nothing read from a damaged database can be trusted
            with self.db.read_txn():
                return self.damage(self.db.read_meta(), deep=True)
        except sqlite3.DatabaseError as exc:
            return [f"{DB_NAME} is unreadable: {exc}"]
