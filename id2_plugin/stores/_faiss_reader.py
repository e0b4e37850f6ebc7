"""What a process holds in memory to answer queries on a FAISS store, and how it follows the writers.

Every query reads ``generation`` inside a SQLite read transaction (a snapshot of the meta). If a writer
committed since the last query, the reader catches up incrementally: new rows are read from the raw file
into an exact in-memory buffer and removals are applied (IVF and flat indexes delete ids; an HNSW graph
cannot, so its removed ids become tombstones filtered inside the search). Only a new snapshot or raw file
forces a full reload.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._lazy import require
from ..errors import StoreDamagedError, StoreError
from . import _faiss_index as fx
from . import _faiss_metadata as md
from . import _integrity as ix
from ._faiss_vectors import VectorFile, fetcher

_CHUNK = 65_536


@dataclass
class State:
    """The in-memory index of one committed generation."""

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


class Reader:
    """Holds the :class:`State` of a store (``state``; None until a query needs it) and keeps it current."""

    def __init__(self, db: md.Database, vectors: VectorFile, spec: fx.IndexSpec, mutex: threading.RLock) -> None:
        self.db = db
        self.vectors = vectors
        self.spec = spec
        self.mutex = mutex
        self.location = vectors.location
        self.state: State | None = None

    def new_buffer(self) -> Any:
        kind = self.spec.kind if self.spec.kind in ("flat", "flat_fp16") else "flat"
        return fx.new_exact_index(kind, self.spec.dim)

    def fill(self, index: Any, ids: np.ndarray, raw: np.ndarray | None) -> None:
        """Add the rows of ``ids`` to ``index``, refusing damaged ones."""
        if raw is None or not len(ids):
            return
        fetch = fetcher(raw)
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
            raise StoreDamagedError(ix.damage_message(self.location, [found], reading=True))

    def _apply_removals(self, state: State, ids: np.ndarray) -> None:
        if not len(ids):
            return
        in_main = ids[ids < state.snap_next_id]
        in_buffer = ids[ids >= state.snap_next_id]
        if len(in_buffer) and state.buffer.ntotal:
            state.buffer.remove_ids(np.ascontiguousarray(in_buffer))
        if len(in_main) and state.main is not None:
            if self.spec.kind == "hnsw":
                state.tombstones.update(int(i) for i in in_main)
                state.selector = fx.exclusion_selector(np.fromiter(state.tombstones, dtype=np.int64))
            else:
                state.main.remove_ids(np.ascontiguousarray(in_main))

    def _load(self, conn: sqlite3.Connection, meta: md.Meta) -> State:
        """Full load of the committed generation described by ``meta``."""
        faiss = require("faiss")
        raw = self.vectors.open(meta)
        main = None
        if meta.snap_gen is not None:
            path = self.location / f"main.{meta.snap_gen}.faiss"
            main = faiss.read_index(str(path))  # FileNotFoundError is retried by the caller
            if self.spec.kind == "hnsw" and main.ntotal:  # removed references stay as zeroed tombstones
                self._refuse_bad_rows(
                    fx.hnsw_vectors(main),
                    faiss.vector_to_array(main.id_map),
                    f"in main.{meta.snap_gen}.faiss the vectors of reference(s)",
                    allow_zero=True,
                )
        state = State(
            generation=meta.generation,
            epoch=(meta.raw_file, meta.snap_gen),
            next_id=meta.next_id,
            snap_next_id=meta.snap_next_id,
            main=main,
            buffer=self.new_buffer(),
            raw=raw,
            search_params=dict(meta.search_params),
        )
        self.fill(state.buffer, md.live_ids(conn, meta.snap_next_id, meta.next_id), raw)
        if main is not None:
            self._apply_removals(state, md.removed_in_main(conn, meta.clean_gen))
        return state

    def _catch_up(self, conn: sqlite3.Connection, state: State, meta: md.Meta) -> None:
        """Bring ``state`` (same epoch) to ``meta.generation``: new rows into the buffer, apply removals."""
        raw = self.vectors.open(meta)
        self.fill(state.buffer, md.live_ids(conn, state.next_id, meta.next_id), raw)
        self._apply_removals(state, md.removed_between(conn, state.generation, meta.generation))
        state.raw = raw
        state.next_id = meta.next_id
        state.generation = meta.generation
        state.search_params = dict(meta.search_params)

    def current(self, conn: sqlite3.Connection) -> State:
        """The state at the generation visible in ``conn``'s read snapshot (cheap if unchanged)."""
        gen = self.db.generation()
        state = self.state
        if state is not None and state.generation == gen:
            return state
        meta = self.db.read_meta()
        if state is not None and state.epoch == (meta.raw_file, meta.snap_gen) and state.generation < gen:
            self._catch_up(conn, state, meta)
            return state
        self.state = None  # free the old index before loading the new one
        self.state = self._load(conn, meta)
        return self.state

    def with_current(self, fn: Callable[[sqlite3.Connection, State], Any]) -> Any:
        """Run ``fn`` on the current state inside one read snapshot of the database.

        Loading retries when a writer deleted a snapshot file between our reading the meta and opening the
        file (two merges in quick succession): the next attempt sees the newer generation.
        """
        with self.mutex:
            for attempt in range(8):
                try:
                    with self.db.read_txn() as conn:
                        try:
                            state = self.current(conn)
                        except (FileNotFoundError, RuntimeError) as exc:
                            self.state = None
                            if attempt == 7:
                                raise StoreError(f"cannot load the store at {self.location}: {exc}") from exc
                            time.sleep(0.01 * (attempt + 1))
                            continue
                        except BaseException:
                            self.state = None  # a half-applied catch-up must not be reused
                            raise
                        return fn(conn, state)
                except sqlite3.Error as exc:
                    raise StoreError(f"reading the store at {self.location} failed: {exc}") from exc
        raise AssertionError("unreachable")
