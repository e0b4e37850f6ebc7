"""Conformance checks for :class:`~id2_plugin.ReferenceStore` backends (built-in or third-party)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import Id2Error, IncompatibleStoreError
from ..types import ReferenceRecord

if TYPE_CHECKING:
    from ..stores.base import ReferenceStore

#: ``factory(location, embedder_identity=..., dim=..., create=...)`` opens or creates a store at ``location``.
StoreFactory = Callable[..., "ReferenceStore"]


def _fail(msg: str) -> None:
    raise AssertionError(msg)


def _sha(i: int) -> str:
    return hashlib.sha256(f"conformance-{i}".encode()).hexdigest()


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def check_reference_store(
    factory: StoreFactory,
    location: str | Path,
    *,
    dim: int = 32,
    n: int = 12,
    persistent: bool = True,
    seed: int = 0,
) -> None:
    """Assert the :class:`~id2_plugin.ReferenceStore` contract on a fresh store created at ``location``.

    ``factory(location, embedder_identity=..., dim=..., create=...)`` must create (``create=True``) or
    open an existing store. Checks add (ids, metadata), dedupe by sha256 (against the store and within a
    batch), contains, query ranking (self is rank 1 with score ~1, ranks 1..k, scores descending, ``k``
    and ``threshold`` honoured), info, remove by reference id and by sha256, refusal of vectors of the
    wrong dimension and of another embedder, and — when ``persistent`` — that everything survives closing
    and reopening.
    """
    rng = np.random.default_rng(seed)
    ident = "conformance-embedder@0000/64/squash+raw"
    vecs = _unit(rng, n, dim)
    records = [ReferenceRecord(sha256=_sha(i), uri=f"ref-{i}.jpg", labels=("conformance",) if i % 2 else ())
               for i in range(n)]
    store = factory(location, embedder_identity=ident, dim=dim, create=True)
    try:
        if store.dim != dim or store.embedder_identity != ident:
            _fail(f"new store reports dim={store.dim}, identity={store.embedder_identity!r}")
        if store.info().count != 0:
            _fail("a new store is not empty")
        if store.query(vecs[:1], k=3) != [[]]:
            _fail("querying an empty store must return one empty list per query")
        res = store.add(vecs, records)
        if len(res.added) != n or res.duplicates or len(set(res.added)) != n:
            _fail(f"adding {n} new references gave {res}")
        ids = list(res.added)
        again = store.add(np.concatenate([vecs[:2], vecs[:1]]), [records[0], records[1], records[0]])
        if again.added or sorted(again.duplicates) != sorted([records[0].sha256, records[1].sha256, records[0].sha256]):
            _fail(f"re-adding known sha256s (and repeating one in the batch) must add nothing, got {again}")
        if store.info().count != n:
            _fail(f"count after dedupe is {store.info().count}, expected {n}")
        if store.contains([records[0].sha256, _sha(10_000), ""]) != [True, False, False]:
            _fail("contains() is wrong for a known, an unknown and an empty sha256")

        k = min(4, n)
        results = store.query(vecs, k=k)
        if len(results) != n:
            _fail(f"query with {n} vectors returned {len(results)} result lists")
        for i, matches in enumerate(results):
            if len(matches) != k:
                _fail(f"query {i}: expected {k} matches, got {len(matches)}")
            top = matches[0]
            if top.reference_id != ids[i] or top.sha256 != records[i].sha256 or top.uri != records[i].uri:
                _fail(f"query {i}: rank 1 is {top}, expected reference {ids[i]} ({records[i].uri})")
            if abs(top.score - 1.0) > 1e-3:
                _fail(f"query {i}: self-similarity is {top.score}, expected ~1")
            if tuple(top.labels) != records[i].labels:
                _fail(f"query {i}: labels {top.labels} != stored {records[i].labels}")
            if [m.rank for m in matches] != list(range(1, k + 1)):
                _fail(f"query {i}: ranks {[m.rank for m in matches]}")
            scores = [m.score for m in matches]
            if any(a < b - 1e-6 for a, b in zip(scores, scores[1:])):
                _fail(f"query {i}: scores not in descending order {scores}")
        filtered = store.query(vecs[:1], k=n, threshold=0.99)[0]
        if [m.reference_id for m in filtered] != [ids[0]]:
            _fail(f"threshold=0.99 must keep only the identical reference, got {filtered}")

        info = store.info()
        if info.count != n or info.dim != dim or info.embedder != ident or not info.backend:
            _fail(f"info() is wrong: {info}")
        for bad_ident in ("another-embedder",):
            try:
                store.check_compatible(bad_ident)
            except IncompatibleStoreError:
                pass
            else:
                _fail("check_compatible accepted another embedder identity")
        try:
            store.add(_unit(rng, 1, dim + 1), [ReferenceRecord(sha256=_sha(-1), uri="wrong-dim.jpg")])
        except (Id2Error, ValueError):
            pass
        else:
            _fail(f"add accepted a vector of dimension {dim + 1} into a {dim}-dim store")

        removed = store.remove([ids[0], records[1].sha256, "no-such-reference"])
        if removed != 2:
            _fail(f"remove(id, sha256, unknown) must remove 2, removed {removed}")
        if store.info().count != n - 2 or store.contains([records[0].sha256, records[1].sha256]) != [False, False]:
            _fail("removed references are still counted or contained")
        top_ids = {m.reference_id for m in store.query(vecs[:2], k=n)[0] + store.query(vecs[:2], k=n)[1]}
        if ids[0] in top_ids or ids[1] in top_ids:
            _fail("removed references are still returned by query")
        readd = store.add(vecs[:1], records[:1])
        if len(readd.added) != 1:
            _fail(f"a removed reference must be addable again, got {readd}")
    finally:
        store.close()

    if not persistent:
        return
    reopened = factory(location, embedder_identity=ident, dim=dim, create=False)
    try:
        if reopened.info().count != n - 1:
            _fail(f"after reopening the store holds {reopened.info().count} references, expected {n - 1}")
        got = reopened.query(vecs[2:4], k=1)
        if [m[0].sha256 for m in got] != [records[2].sha256, records[3].sha256]:
            _fail("after reopening, queries no longer find the stored references")
        if reopened.contains([records[1].sha256]) != [False]:
            _fail("a removal was lost after reopening")
    finally:
        reopened.close()
