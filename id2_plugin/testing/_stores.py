"""Conformance checks for :class:`~id2_plugin.StoreBackend` backends (built-in or third-party)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import Id2Error, IncompatibleStoreError
from ..stores.base import StoreBackend
from ..types import Match, ReferenceRecord

#: ``factory(location, embedder_identity=..., dim=..., create=...)`` opens or creates a store at ``location``.
StoreFactory = Callable[..., StoreBackend]


def _fail(msg: str) -> None:
    raise AssertionError(msg)


def _sha(i: int) -> str:
    return hashlib.sha256(f"conformance-{i}".encode()).hexdigest()


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def check_store_protocol(store: object) -> None:
    """Assert that ``store`` has every member of :class:`~id2_plugin.stores.base.StoreBackend`, the
    contract the package calls a store through."""
    if isinstance(store, StoreBackend):
        return
    wanted = [n for n in vars(StoreBackend) if not n.startswith("_") or n in ("__enter__", "__exit__")]
    missing = [n for n in wanted if not hasattr(type(store), n) and not hasattr(store, n)]
    _fail(f"{type(store).__name__} does not meet the StoreBackend protocol: it lacks {', '.join(missing)}")


def _check_new_store(store: StoreBackend, dim: int, ident: str, vecs: np.ndarray) -> None:
    """A new store reports its dimension and identity and is empty."""
    if store.dim != dim or store.embedder_identity != ident:
        _fail(f"new store reports dim={store.dim}, identity={store.embedder_identity!r}")
    if store.info().count != 0:
        _fail("a new store is not empty")
    if store.query(vecs[:1], k=3) != [[]]:
        _fail("querying an empty store must return one empty list per query")


def _check_add_and_dedupe(store: StoreBackend, vecs: np.ndarray, records: list[ReferenceRecord]) -> list[str]:
    """Adding gives one id per new reference; known sha256s (in the store or the batch) are not added twice."""
    n = len(records)
    res = store.add(vecs, records)
    if len(res.added) != n or res.duplicates or len(set(res.added)) != n:
        _fail(f"adding {n} new references gave {res}")
    again = store.add(np.concatenate([vecs[:2], vecs[:1]]), [records[0], records[1], records[0]])
    if again.added or sorted(again.duplicates) != sorted([records[0].sha256, records[1].sha256, records[0].sha256]):
        _fail(f"re-adding known sha256s (and repeating one in the batch) must add nothing, got {again}")
    if store.info().count != n:
        _fail(f"count after dedupe is {store.info().count}, expected {n}")
    if store.contains([records[0].sha256, _sha(10_000), ""]) != [True, False, False]:
        _fail("contains() is wrong for a known, an unknown and an empty sha256")
    return list(res.added)


def _check_matches(i: int, matches: list[Match], k: int, ref_id: str, record: ReferenceRecord) -> None:
    """Query ``i`` (a stored vector) finds itself first with score ~1, ranks 1..k and descending scores."""
    if len(matches) != k:
        _fail(f"query {i}: expected {k} matches, got {len(matches)}")
    top = matches[0]
    if top.reference_id != ref_id or top.sha256 != record.sha256 or top.uri != record.uri:
        _fail(f"query {i}: rank 1 is {top}, expected reference {ref_id} ({record.uri})")
    if abs(top.score - 1.0) > 1e-3:
        _fail(f"query {i}: self-similarity is {top.score}, expected ~1")
    if tuple(top.labels) != record.labels:
        _fail(f"query {i}: labels {top.labels} != stored {record.labels}")
    if [m.rank for m in matches] != list(range(1, k + 1)):
        _fail(f"query {i}: ranks {[m.rank for m in matches]}")
    scores = [m.score for m in matches]
    if any(a < b - 1e-6 for a, b in zip(scores, scores[1:])):
        _fail(f"query {i}: scores not in descending order {scores}")


def _check_query(store: StoreBackend, vecs: np.ndarray, records: list[ReferenceRecord], ids: list[str]) -> None:
    """One result list per query, each ranked correctly; ``k`` and ``threshold`` are honoured."""
    n = len(records)
    k = min(4, n)
    results = store.query(vecs, k=k)
    if len(results) != n:
        _fail(f"query with {n} vectors returned {len(results)} result lists")
    for i, matches in enumerate(results):
        _check_matches(i, matches, k, ids[i], records[i])
    filtered = store.query(vecs[:1], k=n, threshold=0.99)[0]
    if [m.reference_id for m in filtered] != [ids[0]]:
        _fail(f"threshold=0.99 must keep only the identical reference, got {filtered}")


def _check_info_and_refusals(store: StoreBackend, rng: np.random.Generator, n: int, dim: int, ident: str) -> None:
    """info() describes the store; another embedder and vectors of the wrong dimension are refused."""
    info = store.info()
    if info.count != n or info.dim != dim or info.embedder != ident or not info.backend:
        _fail(f"info() is wrong: {info}")
    try:
        store.check_compatible("another-embedder")
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


def _check_remove(store: StoreBackend, vecs: np.ndarray, records: list[ReferenceRecord], ids: list[str]) -> None:
    """Removal by id and by sha256 takes references out of count, contains and query; they can be re-added."""
    n = len(records)
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


def _check_reopened(store: StoreBackend, vecs: np.ndarray, records: list[ReferenceRecord]) -> None:
    """A reopened store holds what was left after the removals and re-add, and still finds it."""
    n = len(records)
    if store.info().count != n - 1:
        _fail(f"after reopening the store holds {store.info().count} references, expected {n - 1}")
    got = store.query(vecs[2:4], k=1)
    if [m[0].sha256 for m in got] != [records[2].sha256, records[3].sha256]:
        _fail("after reopening, queries no longer find the stored references")
    if store.contains([records[1].sha256]) != [False]:
        _fail("a removal was lost after reopening")


def check_reference_store(
    factory: StoreFactory,
    location: str | Path,
    *,
    dim: int = 32,
    n: int = 12,
    persistent: bool = True,
    seed: int = 0,
) -> None:
    """Assert the :class:`~id2_plugin.StoreBackend` contract on a fresh store created at ``location``.

    ``factory(location, embedder_identity=..., dim=..., create=...)`` must create (``create=True``) or
    open an existing store. Checks that the store has every member of the protocol, add (ids, metadata),
    dedupe by sha256 (against the store and within a batch), contains, query ranking (self is rank 1 with
    score ~1, ranks 1..k, scores descending, ``k`` and ``threshold`` honoured), info, remove by reference
    id and by sha256, refusal of vectors of the wrong dimension and of another embedder, and — when
    ``persistent`` — that everything survives closing and reopening.
    """
    rng = np.random.default_rng(seed)
    ident = "conformance-embedder@0000/64/squash+raw"
    vecs = _unit(rng, n, dim)
    records = [
        ReferenceRecord(sha256=_sha(i), uri=f"ref-{i}.jpg", labels=("conformance",) if i % 2 else ()) for i in range(n)
    ]
    store = factory(location, embedder_identity=ident, dim=dim, create=True)
    try:
        check_store_protocol(store)
        _check_new_store(store, dim, ident, vecs)
        ids = _check_add_and_dedupe(store, vecs, records)
        _check_query(store, vecs, records, ids)
        _check_info_and_refusals(store, rng, n, dim, ident)
        _check_remove(store, vecs, records, ids)
    finally:
        store.close()

    if not persistent:
        return
    reopened = factory(location, embedder_identity=ident, dim=dim, create=False)
    try:
        _check_reopened(reopened, vecs, records)
    finally:
        reopened.close()
