"""The built-in persistent reference store: FAISS for search, SQLite for metadata, one writer at a time.

Layout of a store directory::

    store.sqlite            metadata (WAL): references, removals, store-level meta incl. the generation
    vectors.<g>.f32|f16     raw vectors, row = reference id (float32 for ``flat``, float16 otherwise)
    main.<g>.faiss          the trained / graph ANN index (ivf_flat, ivf_pq, ivf_pq_fs, hnsw only)
    write.lock              writers serialise on this file (fcntl lock via ``filelock``)

:class:`FaissStore` is the face of the store; each concern lives in its own module: the SQLite schema,
meta and transactions (:mod:`._faiss_metadata`), the raw vector file (:mod:`._faiss_vectors`), the write
lock, commit protocol and removal scrubbing (:mod:`._faiss_writer`), the in-memory index and how readers
catch up with writers (:mod:`._faiss_reader`), search (:mod:`._faiss_search`), merge and training policy
(:mod:`._faiss_merge`), damage checks (:mod:`._faiss_verify`) and repair (:mod:`._faiss_repair`).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import IncompatibleStoreError, StoreError
from ..types import AddResult, Match, ReferenceRecord, StoreInfo
from . import _faiss_index as fx
from . import _faiss_metadata as md
from . import _integrity as ix
from ._faiss_merge import Merger
from ._faiss_reader import Reader, State
from ._faiss_repair import Repairer
from ._faiss_search import SEARCH_KEYS, Searcher, TuningView, check_vectors
from ._faiss_vectors import VectorFile, fetcher, file_size
from ._faiss_verify import StoreChecks
from ._faiss_writer import Writer, checkpoint, create_store
from .base import ReferenceStore

logger = logging.getLogger(__name__)


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
        self._mutex = threading.RLock()
        self._opened_identity = embedder_identity
        requested = dict(index_options or {})
        db_path = self.location / md.DB_NAME
        if not db_path.is_file():
            if not create:
                raise StoreError(f"no reference store at {self.location}; create it with `id2-plugin index add`")
            if embedder_identity is None or dim is None:
                raise StoreError(f"creating the store at {self.location} needs the embedder identity and dimension")
            create_store(self.location, fx.IndexSpec.create(index, int(dim), requested), embedder_identity)
        self._db = md.Database(db_path, on_fork=self._forked)
        meta = self._db.read_meta()
        self._embedder = meta.embedder
        self._dim = int(meta.dim)
        self._spec, runtime = self._open_spec(meta, index, requested, create)
        self._db.timeout = float(self._spec.options["lock_timeout"])
        self._vectors = VectorFile(self.location, self._dim, self._spec.raw_dtype)
        self._reader = Reader(self._db, self._vectors, self._spec, self._mutex)
        self._checks = StoreChecks(self._db, self._vectors)
        self._writer = Writer(self._db, self._vectors, self._checks, self._reader, self._mutex, self._db.timeout)
        self._merger = Merger(self._db, self._vectors, self._reader, self._spec)
        self._repairer = Repairer(self._writer, self._merger)
        self._searcher = Searcher(self.location, self._spec, {k for k in runtime if k in SEARCH_KEYS})
        if embedder_identity is not None:
            self.check_compatible(embedder_identity)
        if dim is not None and int(dim) != self._dim:
            raise IncompatibleStoreError(
                f"the store at {self.location} holds {self._dim}-dim vectors but the embedder produces {dim}-dim ones"
            )

    def _open_spec(
        self, meta: md.Meta, index: str, requested: dict[str, Any], create: bool
    ) -> tuple[fx.IndexSpec, dict[str, Any]]:
        """The stored index spec with this handle's runtime options applied, and those options."""
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
        return stored.with_runtime(runtime), runtime

    def _forked(self) -> None:
        # A forked child must not use the parent's cached index or lock handle.
        self._reader.state = None
        self._writer.reset_lock()

    @property
    def embedder_identity(self) -> str:
        return self._embedder

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def index_type(self) -> str:
        return self._spec.kind

    def close(self) -> None:
        with self._mutex:
            self._reader.state = None
            self._db.close()

    # -- reads ---------------------------------------------------------------------------------------
    def query(self, vectors: np.ndarray, k: int = 5, threshold: float | None = None) -> list[list[Match]]:
        """Up to ``k`` matches per query vector, best first (rank 1), at the latest committed generation."""
        q = check_vectors(vectors, self._dim)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")

        def run(conn: sqlite3.Connection, state: State) -> list[list[Match]]:
            scores, ids = self._searcher.search(state, q, k)
            # Only matches that can be returned need their metadata: with a threshold most candidates are
            # dropped before the SQLite lookup, which is the larger part of a batched query's cost.
            wanted = ids if threshold is None else np.where(scores >= np.float64(threshold), ids, -1)
            refs = md.match_fields(conn, wanted)
            out: list[list[Match]] = []
            # Python lists, not numpy scalars: at thousands of queries per second the per-match loop is most of
            # a batched lookup's time (benchmarks/scale.py)
            for d_row, i_row in zip(scores.tolist(), ids.tolist()):
                matches: list[Match] = []
                for score, rid in zip(d_row, i_row):
                    fields = refs.get(rid)
                    if fields is None or (threshold is not None and score < threshold):
                        continue
                    matches.append(Match.ranked(fields[0], fields[1], score, len(matches) + 1, fields[2], fields[3]))
                out.append(matches)
            return out

        return self._reader.with_current(run)  # type: ignore[no-any-return]

    def fetch_vectors(self, reference_ids: Sequence[str]) -> np.ndarray | None:
        """Stored rows of ``reference_ids`` at the latest committed generation (float32)."""
        ids = np.array([int(r) for r in reference_ids], dtype=np.int64)

        def run(conn: sqlite3.Connection, state: State) -> np.ndarray:
            if len(ids) and (
                state.raw is None or ids.min() < 0 or ids.max() >= state.next_id or not md.all_live(conn, ids)
            ):
                raise StoreError(f"unknown reference id among {list(reference_ids)[:5]}")
            return np.asarray(state.raw[ids], dtype=np.float32) if len(ids) else np.zeros((0, self._dim), np.float32)

        return self._reader.with_current(run)  # type: ignore[no-any-return]

    def contains(self, sha256s: Sequence[str]) -> list[bool]:
        with self._mutex:
            try:
                known = md.known(self._db.conn, [s for s in sha256s if s])
            except sqlite3.Error as exc:
                raise StoreError(f"reading the store at {self.location} failed: {exc}") from exc
        return [bool(s) and s in known for s in sha256s]

    # -- writes --------------------------------------------------------------------------------------
    def add(self, vectors: np.ndarray, records: Sequence[ReferenceRecord]) -> AddResult:
        """Append new references (skipping sha256s already stored or repeated in the batch) and commit.

        Reference ids are assigned by the store (consecutive integers, never reused; ``record.reference_id``
        is ignored). Streams: memory use is the batch plus, for IVF/HNSW, the index being maintained; call
        it once per batch for bulk loads (an interrupted bulk load re-run with the same inputs adds only
        what is missing, because duplicates are detected by sha256).
        """
        v = self._checked_batch(vectors, records)
        with self._writer.writing() as meta:
            first: dict[str, int] = {}
            duplicates: list[str] = []
            for i, r in enumerate(records):
                if r.sha256 in first:
                    duplicates.append(r.sha256)
                else:
                    first[r.sha256] = i
            known = md.known(self._db.conn, list(first))
            keep = [i for sha, i in first.items() if sha not in known]
            duplicates.extend(sha for sha in first if sha in known)
            if not keep:
                return AddResult(added=(), duplicates=tuple(duplicates))
            start = meta.next_id
            ids = list(range(start, start + len(keep)))
            written = self._vectors.write(meta, start, v[keep])
            checkpoint("add:raw_written")
            self._commit_added(meta, [(rid, records[i]) for rid, i in zip(ids, keep)], written)
            checkpoint("add:committed")
            self._merger.maybe_merge(self._db.read_meta())
        return AddResult(added=tuple(str(i) for i in ids), duplicates=tuple(duplicates))

    def _checked_batch(self, vectors: np.ndarray, records: Sequence[ReferenceRecord]) -> np.ndarray:
        if self._opened_identity is None:
            raise StoreError(
                "this store handle was opened without an embedder identity; open it with the "
                "embedder's identity to add references"
            )
        v = check_vectors(vectors, self._dim)
        if len(records) != len(v):
            raise ValueError(f"{len(v)} vectors but {len(records)} records")
        for r in records:
            if not r.sha256:
                raise ValueError(f"record for {r.uri!r} has no sha256")
        bad = ix.bad_rows(v)
        if len(bad):
            raise ValueError(f"vector {int(bad[0])} is not L2-normalised (norm {float(np.linalg.norm(v[bad[0]])):.4g})")
        return v

    def _commit_added(self, meta: md.Meta, added: list[tuple[int, ReferenceRecord]], written: np.ndarray) -> None:
        """Commit the reference rows of rows ``written`` (already on disk past the committed end)."""
        gen = meta.generation + 1
        with self._db.write_txn() as conn:
            md.insert_refs(conn, added, gen)
            ix.append(conn, self._vectors.checked(meta), meta.next_id, written)
            checkpoint("add:before_commit")
            md.set_meta(conn, generation=gen, next_id=meta.next_id + len(added), count=meta.count + len(added))

    def remove(self, keys: Sequence[str]) -> int:
        """Remove references by reference id or sha256; unknown keys are ignored. Returns how many went."""
        with self._writer.writing() as meta:
            ids = sorted(md.resolve(self._db.conn, keys))
            if not ids:
                return 0
            gen = meta.generation + 1
            in_main = sum(1 for i in ids if i < meta.snap_next_id)
            with self._db.write_txn() as conn:
                md.delete_refs(conn, ids)
                md.mark_removed(conn, ids, gen, main_below=meta.snap_next_id)
                checkpoint("remove:before_commit")
                md.set_meta(conn, generation=gen, count=meta.count - len(ids), main_count=meta.main_count - in_main)
            meta = self._writer.scrub_removed(self._db.read_meta())
            self._merger.after_removal(meta, in_main > 0)
        return len(ids)

    def compact(self, rebuild: bool = False) -> str | None:
        """Fold the exact buffer into the ANN index now (``rebuild``: retrain / rebuild it from raw vectors).

        Returns what was done (``"fold"``, ``"rebuild"``) or None (flat index, or too few vectors to train).
        """
        with self._writer.writing() as meta:
            return self._merger.maybe_merge(meta, force=True, rebuild=rebuild)

    def save_search_params(self, params: dict[str, Any], tuned: dict[str, Any] | None = None) -> None:
        """Persist search-time parameters (e.g. the tuned ``nprobe``); readers pick them up on their next query."""
        with self._writer.writing() as meta:
            with self._db.write_txn() as conn:
                md.set_meta(
                    conn, generation=meta.generation + 1, search_params={**meta.search_params, **params}, tuned=tuned
                )
        self._searcher.explicit -= set(params)

    # -- integrity -----------------------------------------------------------------------------------
    def verify(self) -> list[str]:
        """Every problem found in the committed store (SQLite's own check, file lengths, checksums, rows, the
        ANN snapshot loads); empty = sound."""
        with self._mutex:
            return self._checks.verify()

    def repair(self) -> list[str]:
        """Make a damaged store writable again; returns what was done (empty: nothing was wrong).

        References whose vector rows are gone are dropped (``index add`` re-adds them), the raw file is
        restored to its committed length, and the ANN index is rebuilt from the raw vectors and SQLite.
        """
        return self._repairer.repair()

    # -- info ----------------------------------------------------------------------------------------
    def info(self) -> StoreInfo:
        """Summary from the committed metadata (cheap: the index is not loaded)."""
        with self._mutex:
            try:
                with self._db.read_txn():
                    meta = self._db.read_meta()
                    tombstones = self._merger.tombstone_count(meta)
                    damage = self._checks.damage(meta)
            except sqlite3.Error as exc:
                raise StoreError(f"reading the store at {self.location} failed: {exc}") from exc
        spec = self._spec
        indexed = meta.snap_gen is not None
        extra: dict[str, Any] = {
            "index_options": dict(spec.options),
            "search_params": self._searcher.effective(meta.search_params, meta.facts.get("nlist") if indexed else None),
            "tuned": meta.tuned,
            "indexed": int(meta.main_count),
            "exact_buffer": int(meta.count - meta.main_count),
            "raw_dtype": str(spec.raw_dtype),
            "disk_bytes": sum(
                file_size(self.location, p.name) for p in self.location.iterdir()
            ),  # racing deletes count 0
            "raw_bytes": file_size(self.location, meta.raw_file),
            "index_bytes": file_size(self.location, f"main.{meta.snap_gen}.faiss") if indexed else 0,
            "created_at": meta.created_at,
            "format_version": md.FORMAT_VERSION,
            "status": "damaged: " + "; ".join(damage) if damage else "ok",
            "search": self._search_summary(meta),
        }
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

    def _search_summary(self, meta: md.Meta) -> str:
        spec = self._spec
        if spec.kind in ("flat", "flat_fp16"):
            return "exact"
        if meta.snap_gen is None:
            why = (
                f"untrained: {meta.count} < train_min {spec.train_min}"
                if spec.trained
                else f"graph not built yet: {meta.count} < merge_min {spec.options['merge_min']}"
            )
            return f"exact ({why})"
        return f"approximate {spec.kind} over {meta.main_count} + exact buffer of {int(meta.count - meta.main_count)}"

    @contextmanager
    def tuning_view(self) -> Iterator[TuningView]:
        """The current ANN index held still (not refreshed) while a caller measures it."""
        with self._mutex:

            def run(conn: sqlite3.Connection, state: State) -> TuningView:
                ids = md.live_ids(conn, 0, state.snap_next_id) if state.main is not None else np.zeros(0, np.int64)
                raw = state.raw if state.raw is not None else np.zeros((0, self._dim), np.float32)
                params = self._searcher.params_of(state) if state.main is not None else {}
                return TuningView(
                    state.main, ids, fetcher(raw), params, lambda q, k, p: self._searcher.search_main(state, q, k, p)
                )

            yield self._reader.with_current(run)
