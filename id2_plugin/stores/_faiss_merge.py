"""When and how a FAISS store folds its exact buffer into the ANN index or rebuilds that index, and the
snapshot file each merge commits.

**Index types.** ``flat`` / ``flat_fp16`` are exact (the raw file is the index, loaded at open). For
``ivf_flat`` / ``ivf_pq`` / ``ivf_pq_fs`` / ``hnsw`` the store keeps an ANN index (``main``) plus an exact
buffer of the references added since the last snapshot. The buffer is folded into the ANN index when it
holds ``max(merge_min, merge_ratio * indexed)`` vectors, which bounds both the writer's snapshot I/O
(amortised) and the buffer's brute-force cost.

**Training policy (IVF).** While the store holds fewer than ``train_min`` vectors (``auto``: 20,000 with
``nlist: auto``, else 39 per list; IVF-PQ also needs 39 per PQ centroid), every search is exact over the
buffer and ``info().extra`` says so. At the first merge past that size the index is trained on a seeded
sample of at most ``max_train_per_list * nlist`` stored vectors and filled with all of them. With
``nlist: auto`` (~2 sqrt N) it is retrained from the raw vectors each time the store grows
``retrain_growth``-fold (0 disables), so the lists keep up with the data; ``compact(rebuild=True)``
retrains on demand.

**Removal.** An HNSW graph cannot delete, so its removed ids are tombstones, and the graph is rebuilt from
the raw vectors once they exceed ``tombstone_ratio`` of it. When a removed id sat in a snapshot, a new
snapshot without its vector is written at once (IVF deletes it; HNSW keeps the node with a zeroed vector)
and the old file deleted: the embedding must not stay recoverable from the store's files.
"""

from __future__ import annotations

import os
import sqlite3
from typing import Any

from .._lazy import require
from . import _faiss_index as fx
from . import _faiss_metadata as md
from . import _integrity as ix
from ._faiss_reader import Reader, State
from ._faiss_vectors import VectorFile, fetcher, fsync_dir, fsync_file
from ._faiss_writer import checkpoint, cleanup


class Merger:
    """Merges of one store (every method runs with the write lock held)."""

    def __init__(self, db: md.Database, vectors: VectorFile, reader: Reader, spec: fx.IndexSpec) -> None:
        self.db = db
        self.vectors = vectors
        self.reader = reader
        self.spec = spec
        self.location = vectors.location

    def tombstone_count(self, meta: md.Meta) -> int:
        if self.spec.kind != "hnsw" or meta.snap_gen is None:
            return 0
        return self.db.tombstones(meta.clean_gen)

    def plan(self, meta: md.Meta, force: bool = False, rebuild: bool = False) -> str | None:
        """None, ``"fold"`` (add the buffer to the ANN index) or ``"rebuild"`` (train / rebuild from raw)."""
        spec = self.spec
        if not spec.snapshot or meta.count == 0:
            return None
        if spec.trained and meta.count < spec.train_min:
            return None  # too few vectors to train: searches stay exact
        if meta.snap_gen is None or rebuild:
            enough = meta.count - meta.main_count >= spec.options["merge_min"]
            return "rebuild" if (force or rebuild or enough or spec.trained) else None
        if spec.trained:
            growth = float(spec.options["retrain_growth"])
            trained_on = int(meta.facts.get("trained_on", meta.trained_count))
            cap = int(spec.options["max_train_per_list"]) * spec.nlist_for(meta.count)
            auto = spec.options["nlist"] == "auto"
            if growth > 0 and meta.count >= growth * max(meta.trained_count, 1) and (auto or trained_on < cap):
                return "rebuild"
        else:
            tomb = self.tombstone_count(meta)
            if tomb and tomb >= float(spec.options["tombstone_ratio"]) * (meta.main_count + tomb):
                return "rebuild"
        buffered = meta.count - meta.main_count
        threshold = max(int(spec.options["merge_min"]), float(spec.options["merge_ratio"]) * meta.main_count)
        if buffered > 0 and (force or buffered >= threshold):
            return "fold"
        return None

    def maybe_merge(self, meta: md.Meta, force: bool = False, rebuild: bool = False) -> str | None:
        plan = self.plan(meta, force=force, rebuild=rebuild)
        if plan is not None:
            self.merge(meta, plan)
        return plan

    def after_removal(self, meta: md.Meta, touched: bool) -> None:
        """Merge by policy; when the snapshot on disk held a removed vector (``touched``), replace it now
        and delete the old file (readers that still open it retry on the new generation)."""
        plan = self.maybe_merge(meta)
        if not touched or meta.snap_gen is None:
            return
        if plan is None:
            self.merge(meta, "fold")
        prev = self.db.read_meta().prev_snap_gen
        if prev is not None:
            (self.location / f"main.{prev}.faiss").unlink(missing_ok=True)

    def merge(self, meta: md.Meta, plan: str) -> None:
        """Fold the buffer into (or rebuild) the ANN index, write a snapshot, commit."""
        gen = meta.generation + 1
        facts = dict(meta.facts)
        with self.db.read_txn() as conn:
            if plan == "rebuild":
                state, built = self._rebuilt(conn, meta)
                facts.update(built)
                trained_count, clean_gen = meta.count, gen
            else:
                state = self._folded(conn, meta)
                trained_count = meta.trained_count
                # IVF deletes physically, so the snapshot is clean; an HNSW graph keeps its tombstones.
                clean_gen = meta.clean_gen if self.spec.kind == "hnsw" else gen
        facts.update(self._write_snapshot(state.main, gen))
        with self.db.write_txn() as conn:
            md.set_meta(
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
        checkpoint("merge:committed")
        # Keep the fresh index in memory: it is exactly what the new generation describes.
        state.generation = gen
        state.epoch = (meta.raw_file, gen)
        state.snap_next_id = meta.next_id
        state.buffer = self.reader.new_buffer()
        if plan == "rebuild":
            state.tombstones, state.selector = set(), None
        self.reader.state = state
        cleanup(self.location, self.db.read_meta())

    def _rebuilt(self, conn: sqlite3.Connection, meta: md.Meta) -> tuple[State, dict[str, Any]]:
        """A new ANN index trained on / built from every live raw vector, and the facts of its build."""
        self.reader.state = None  # free the old index first: peak memory = one index
        raw = self.vectors.open(meta)
        ids = md.live_ids(conn, 0, meta.next_id)
        assert raw is not None
        main, facts = fx.build_ann_index(self.spec, ids, fetcher(raw), progress=True)
        state = State(
            generation=meta.generation,
            epoch=("", None),
            next_id=meta.next_id,
            snap_next_id=meta.next_id,
            main=main,
            buffer=self.reader.new_buffer(),
            raw=raw,
            search_params=dict(meta.search_params),
        )
        return state, facts

    def _folded(self, conn: sqlite3.Connection, meta: md.Meta) -> State:
        """The current state with its buffer added to the ANN index (and HNSW tombstones' vectors zeroed)."""
        state = self.reader.current(conn)
        self.reader.fill(state.main, md.live_ids(conn, meta.snap_next_id, meta.next_id), state.raw)
        if self.spec.kind == "hnsw":
            fx.zero_stored_vectors(state.main, state.tombstones)
        return state

    def _write_snapshot(self, index: Any, gen: int) -> dict[str, Any]:
        """Write ``main.<gen>.faiss`` durably (temp file, fsync, rename); returns the facts to commit with it."""
        tmp = self.location / f"main.{gen}.faiss.tmp"
        require("faiss").write_index(index, str(tmp))
        fsync_file(tmp)
        facts = {
            "snap_bytes": tmp.stat().st_size,  # lets every later write and `info` detect a truncated snapshot
            "snap_digest": ix.file_digest(tmp),  # read back: what the disk holds, checked by `verify`
        }
        checkpoint("merge:tmp_written")
        os.replace(tmp, self.location / f"main.{gen}.faiss")
        fsync_dir(self.location)
        checkpoint("merge:renamed")
        return facts
