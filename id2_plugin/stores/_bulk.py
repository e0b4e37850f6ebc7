"""Memory-bounded, resumable bulk insertion into any :class:`~id2_plugin.stores.base.StoreBackend`.

Large reference sets arrive as a stream of small batches (an embedding loop, a Ray Data pipeline). Adding
each small batch directly would commit far too often (a FAISS commit rewrites files), while collecting
everything first would hold the whole set in memory. :func:`bulk_add` sits in between: it drops content
the store already holds (so a restarted run skips finished work), buffers at most ``commit_every`` new
references, and commits them with one ``store.add``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .._progress import progress_bar
from ..types import AddResult, ReferenceRecord
from .base import StoreBackend

Batch = tuple[np.ndarray, Sequence[ReferenceRecord]]


@dataclass
class BulkAddResult:
    """Counts of a :func:`bulk_add`: new references, skipped duplicates, commits made."""

    added: int = 0
    duplicates: int = 0
    commits: int = 0


@dataclass
class _Pending:
    """References buffered for the next commit. ``shas`` also holds content buffered but not committed
    yet, which ``store.contains`` cannot see."""

    vecs: list[np.ndarray] = field(default_factory=list)
    recs: list[ReferenceRecord] = field(default_factory=list)
    shas: set[str] = field(default_factory=set)

    def take(self, vecs: np.ndarray, records: Sequence[ReferenceRecord], known: Sequence[bool]) -> int:
        """Buffer the references of a batch that are new; returns how many were duplicates."""
        keep: list[int] = []
        for i, (rec, is_known) in enumerate(zip(records, known)):
            if not is_known and rec.sha256 not in self.shas:
                self.shas.add(rec.sha256)
                keep.append(i)
        if keep:
            self.vecs.append(vecs[keep])
            self.recs.extend(records[i] for i in keep)
        return len(records) - len(keep)

    def clear(self) -> None:
        self.vecs.clear()
        self.recs.clear()
        self.shas.clear()


def bulk_add(
    store: StoreBackend,
    batches: Iterable[Batch],
    *,
    commit_every: int = 1024,
    progress: bool | str = False,
    total: int | None = None,
    on_commit: Callable[[AddResult], None] | None = None,
    on_added: Callable[[list[tuple[str, ReferenceRecord]]], None] | None = None,
    skip_known: bool = True,
) -> BulkAddResult:
    """Add a stream of ``(vectors, records)`` batches to ``store``, skipping content it already holds.

    Resume semantics: before buffering, every batch is checked with ``store.contains`` and content seen
    earlier in this run is skipped too, so re-running the same input after an interruption adds only what
    is missing and never creates duplicates. Memory holds at most ``commit_every`` buffered references plus
    one incoming batch. ``on_commit`` is called with each commit's :class:`AddResult` (e.g. to log ids),
    ``on_added`` with the ``(id, record)`` of each reference a commit added. A caller that already dropped
    stored content before embedding passes ``skip_known=False``: the store's own ``add`` still refuses
    duplicates atomically, so nothing is checked twice for nothing.
    """
    if commit_every < 1:
        raise ValueError(f"commit_every must be >= 1, got {commit_every}")
    result = BulkAddResult()
    pending = _Pending()
    bar = progress_bar(progress, total, "adding", unit="ref")

    def commit() -> None:
        if not pending.recs:
            return
        res = store.add(np.concatenate(pending.vecs), pending.recs)
        result.added += len(res.added)
        # The store reports anything another writer committed in the meantime as a duplicate.
        result.duplicates += len(res.duplicates)
        result.commits += 1
        if on_added is not None:
            refused = set(res.duplicates)
            on_added(list(zip(res.added, [r for r in pending.recs if r.sha256 not in refused])))
        pending.clear()
        if on_commit is not None:
            on_commit(res)

    try:
        for vectors, records in batches:
            vecs = np.asarray(vectors, dtype=np.float32)
            if vecs.ndim != 2 or len(vecs) != len(records):
                raise ValueError(f"batch of {len(records)} records has vectors of shape {vecs.shape}")
            if not len(records):
                continue
            known = store.contains([r.sha256 for r in records]) if skip_known else [False] * len(records)
            result.duplicates += pending.take(vecs, records, known)
            if len(pending.recs) >= commit_every:
                commit()
            bar.update(len(records))
        commit()
    finally:
        bar.close()
    return result
