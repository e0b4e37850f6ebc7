"""Search threads and the numpy BLAS path of exact search (``_faiss_index``), alone and through a FaissStore."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import faiss
import numpy as np
import pytest

from id2_plugin.errors import ConfigError
from id2_plugin.stores import _faiss_index as fx
from id2_plugin.stores._faiss_vectors import fetcher
from id2_plugin.stores.faiss_store import FaissStore
from id2_plugin.types import ReferenceRecord

DIM = 48


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_blas_topk_matches_a_full_sort_across_blocks(rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    xb, q = unit(rng, 1000), unit(rng, 30)
    monkeypatch.setattr(fx, "_BLOCK_FLOATS", 30 * 7)  # blocks of 7 rows: the merge across blocks is exercised
    scores, rows = fx.blas_topk(q, xb, 5)
    full = q @ xb.T
    want = np.argsort(-full, axis=1)[:, :5]
    assert (rows == want).all()
    np.testing.assert_allclose(scores, np.take_along_axis(full, want, 1), rtol=1e-6)


def test_blas_topk_with_fewer_vectors_than_k(rng: np.random.Generator) -> None:
    scores, rows = fx.blas_topk(unit(rng, 3), unit(rng, 2), 5)
    assert scores.shape == rows.shape == (3, 2)


@pytest.mark.parametrize("index", ["flat", "ivf_flat"])
def test_store_batches_rank_the_same_through_numpy_and_faiss(
    tmp_path: Path, rng: np.random.Generator, index: str
) -> None:
    opts = {"nlist": 4, "merge_min": 10_000} if index == "ivf_flat" else {}  # ivf: everything still in the exact buffer
    store = FaissStore(tmp_path / "s", embedder_identity="e", dim=DIM, create=True, index=index, index_options=opts)
    vecs = unit(rng, 600)
    store.add(
        vecs, [ReferenceRecord(sha256=hashlib.sha256(str(i).encode()).hexdigest(), uri=f"r{i}") for i in range(600)]
    )
    store.remove(["3", "10"])
    queries = vecs[:40] + 0.05 * unit(rng, 40)
    numpy_path = [[m.reference_id for m in r] for r in store.query(queries, k=5)]
    faiss_only = FaissStore(tmp_path / "s", embedder_identity="e", index_options={"blas_min_batch": 10_000})
    faiss_path = [[m.reference_id for m in r] for r in faiss_only.query(queries, k=5)]
    assert numpy_path == faiss_path
    assert numpy_path[0][0] == "0" and "3" not in numpy_path[3] and "10" not in numpy_path[10]


def test_thread_counts_follow_the_batch_size() -> None:
    opts = fx.IndexSpec.create("flat", DIM).options
    assert fx.threads_for(1, opts) == 1
    assert fx.threads_for(2, opts) == (os.cpu_count() or 1)
    assert fx.threads_for(1, {**opts, "query_threads": 0}) == (os.cpu_count() or 1)
    before = faiss.omp_get_max_threads()
    with fx.faiss_threads(1):
        assert faiss.omp_get_max_threads() == 1
    assert faiss.omp_get_max_threads() == before


def test_thread_options_are_validated() -> None:
    with pytest.raises(ConfigError, match="query_threads"):
        fx.IndexSpec.create("flat", DIM, {"query_threads": -1})
    with pytest.raises(ConfigError, match="blas_min_batch"):
        fx.IndexSpec.create("hnsw", DIM, {"blas_min_batch": 0})


def test_fetch_rows_of_repeated_unsorted_ids(tmp_path: Path) -> None:
    # [3, 4, 4, 6] sorted spans 4 rows with 4 ids: a contiguous-run shortcut would wrongly read rows 3..6
    x = np.arange(40, dtype=np.float16).reshape(10, 4)
    raw = np.memmap(tmp_path / "v.f16", dtype=np.float16, mode="w+", shape=x.shape)
    raw[:] = x
    raw.flush()
    ids = np.array([6, 4, 3, 4], dtype=np.int64)
    got = fx.fetch_rows(fetcher(np.memmap(tmp_path / "v.f16", dtype=np.float16, mode="r", shape=x.shape)), ids)
    np.testing.assert_array_equal(got, x[ids].astype(np.float32))
