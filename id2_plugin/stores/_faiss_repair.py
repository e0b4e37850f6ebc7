"""Making a damaged FAISS store writable again (``index verify --repair``).

References whose vector rows are lost or damaged are dropped (their content cannot be recovered; ``index
add`` re-adds them), the raw file is restored to its committed length, removed references' rows are
zeroed, the ANN index is rebuilt from the raw vectors and SQLite, and every row's checksum is recorded
anew. A damaged SQLite database cannot be rebuilt from the other files: repair refuses it.
"""

from __future__ import annotations

import sqlite3

from ..errors import StoreDamagedError
from . import _faiss_metadata as md
from . import _integrity as ix
from ._faiss_merge import Merger
from ._faiss_writer import Writer


class Repairer:
    """Repairs one store through its writer (lock held throughout) and its merger (the rebuild)."""

    def __init__(self, writer: Writer, merger: Merger) -> None:
        self.writer = writer
        self.merger = merger
        self.db = writer.db
        self.vectors = writer.vectors
        self.location = writer.location

    def repair(self) -> list[str]:
        """What was done (empty: nothing was wrong)."""
        try:
            return self._repair()
        except sqlite3.DatabaseError as exc:
            raise StoreDamagedError(self._unrepairable(f"{md.DB_NAME} is unreadable: {exc}")) from None

    def _unrepairable(self, problem: str) -> str:
        return (
            f"the store at {self.location} is damaged: {problem}; repair cannot rebuild the database: restore "
            f"{md.DB_NAME} from a backup or build the store again with `id2-plugin index add`"
        )

    def _repair(self) -> list[str]:
        with self.writer.writing(check=False) as meta:
            sql = ix.sqlite_damage(self.db.conn, md.DB_NAME)
            if sql:
                raise StoreDamagedError(self._unrepairable(sql[0]))
            if not self.writer.checks.damage(meta, deep=True):
                return []
            done = self._drop_lost_rows(meta)
            meta = self.db.read_meta()
            done += self._drop_damaged_rows(meta)
            meta = self.db.read_meta()
            scrubbed = self.writer.checks.unscrubbed(meta)
            if scrubbed:
                meta = self.writer.scrub_removed(meta, since=-1)
                done.append(f"overwrote the vectors of {len(scrubbed)} removed reference(s) with zeros")
            if self.merger.maybe_merge(meta, force=True, rebuild=True) == "rebuild":
                done.append(f"rebuilt the {self.merger.spec.kind} index from the {meta.count} stored vectors")
            with self.db.write_txn() as conn:
                ix.record_all(conn, self.vectors.checked(meta))
            self.writer.reader.state = None
            return done

    def _drop_damaged_rows(self, meta: md.Meta) -> list[str]:
        """Remove the references whose vectors fail their checksum or the row check."""
        ids = ix.scan(self.db.conn, self.vectors.checked(meta)).suspect_ids
        if not ids:
            return []
        gen = meta.generation + 1
        with self.db.write_txn() as conn:
            uris = md.uris(conn, ids)
            md.delete_refs(conn, ids)
            md.mark_removed(conn, ids, gen)  # _drop_lost_rows ran first: the snapshot is gone, nothing is in_main
            md.set_meta(conn, generation=gen, count=meta.count - len(ids))
        return [
            f"dropped {len(ids)} reference(s) whose vectors were damaged (cannot be recovered: add them "
            f"again): {ix.describe(ids, uris)}"
        ]

    def _drop_lost_rows(self, meta: md.Meta) -> list[str]:
        """Remove references whose vectors the raw file lost and pad it back to the committed length."""
        cut = min(self.vectors.rows_on_disk(meta), meta.next_id)
        lost = [r[0] for r in self.db.conn.execute("SELECT id FROM refs WHERE id >= ? ORDER BY id", (cut,))]
        gen = meta.generation + 1
        with self.db.write_txn() as conn:
            conn.execute("DELETE FROM refs WHERE id >= ?", (cut,))
            md.mark_removed(conn, lost, gen)
            n = conn.execute("SELECT COUNT(*) FROM refs").fetchone()[0]
            # the snapshot is rebuilt next; everything is counted as buffered until then
            md.set_meta(conn, generation=gen, count=n, main_count=0, snap_gen=None, prev_snap_gen=None, snap_next_id=0)
        self.vectors.restore_length(meta)  # zero rows for the dropped ids, never read again
        if not lost:
            return []
        more = " ..." if len(lost) > 5 else ""
        return [f"dropped {len(lost)} reference(s) whose vectors were lost (ids {lost[:5]}{more})"]
