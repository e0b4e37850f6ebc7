"""bulk_add: streaming, memory-bounded, resumable insertion, on both built-in backends."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from id2_plugin.stores._bulk import bulk_add
from id2_plugin.stores.base import ReferenceStore
from id2_plugin.types import ReferenceRecord

DIM = 64
EMB = "test-embedder@0123456789abcdef/256/squash+raw"


def _open(backend: str, tmp_path: Path) -> ReferenceStore:
    if backend == "faiss":
        pytest.importorskip("faiss")
        from id2_plugin.stores.faiss_store import FaissStore

        return FaissStore(tmp_path / "faiss", embedder_identity=EMB, dim=DIM, create=True)
    pytest.importorskip("qdrant_client")
    from id2_plugin.stores.qdrant_store import QdrantStore

    return QdrantStore(str(tmp_path / "qdrant"), embedder_identity=EMB, dim=DIM, create=True)


@pytest.fixture(params=["faiss", "qdrant"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ReferenceStore]:
    s = _open(request.param, tmp_path)
    yield s
    s.close()


def _data(n: int, seed: int = 0) -> tuple[np.ndarray, list[ReferenceRecord]]:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    recs = [
        ReferenceRecord(sha256=hashlib.sha256(f"img-{i}".encode()).hexdigest(), uri=f"/img/{i}.jpg") for i in range(n)
    ]
    return v, recs


def _batches(v: np.ndarray, recs: list[ReferenceRecord], size: int, stop_after: int | None = None):
    for b, start in enumerate(range(0, len(recs), size)):
        if stop_after is not None and b == stop_after:
            raise KeyboardInterrupt("simulated crash")
        yield v[start : start + size], recs[start : start + size]


def test_streams_in_bounded_commits_and_skips_repeats(store: ReferenceStore) -> None:
    v, recs = _data(100)
    # Content repeated inside the stream (rows 0-9 again at the end, under other uris) is skipped.
    v2 = np.concatenate([v, v[:10]])
    recs2 = recs + [ReferenceRecord(sha256=r.sha256, uri=r.uri + ".copy") for r in recs[:10]]
    sizes: list[int] = []
    res = bulk_add(store, _batches(v2, recs2, 7), commit_every=25, on_commit=lambda r: sizes.append(len(r.added)))
    assert (res.added, res.duplicates) == (100, 10)
    # Never more than commit_every plus one incoming batch buffered.
    assert res.commits == len(sizes) and max(sizes) <= 25 + 7 and sum(sizes) == 100
    assert store.info().count == 100
    top = store.query(v[[5, 77]], k=1)
    assert [t[0].uri for t in top] == ["/img/5.jpg", "/img/77.jpg"]


def test_resume_after_interruption_adds_only_the_rest(store: ReferenceStore) -> None:
    v, recs = _data(60, seed=1)
    with pytest.raises(KeyboardInterrupt):
        bulk_add(store, _batches(v, recs, 10, stop_after=4), commit_every=20)
    # Two commits of 20 happened before the input died at batch 4 (rows 40-49 never arrived).
    assert store.info().count == 40
    res = bulk_add(store, _batches(v, recs, 10), commit_every=20)
    assert (res.added, res.duplicates) == (20, 40)
    assert store.info().count == 60
    again = bulk_add(store, _batches(v, recs, 10), commit_every=20)
    assert (again.added, again.duplicates, again.commits) == (0, 60, 0)


def test_rejects_malformed_batches(store: ReferenceStore) -> None:
    v, recs = _data(3)
    with pytest.raises(ValueError):
        bulk_add(store, [(v, recs[:2])])
    with pytest.raises(ValueError):
        bulk_add(store, [], commit_every=0)
