"""FaissStore: add / query / remove / dedupe on every index type, persistence, validation and errors."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from id2_plugin.errors import ConfigError, IncompatibleStoreError, StoreError
from id2_plugin.stores.faiss_store import FaissStore
from id2_plugin.types import ReferenceRecord

DIM = 64
EMB = "test-embedder@0123/256/squash"
# Small-data options that still exercise every code path: IVF trains at a few hundred vectors, the HNSW
# graph and the IVF lists receive each batch immediately (merge_min 0).
SMALL: dict[str, dict] = {
    "flat": {},
    "flat_fp16": {},
    "ivf_flat": {"nlist": 8, "merge_min": 0},
    "ivf_pq": {"nlist": 8, "nbits": 4, "merge_min": 0},
    "ivf_pq_fs": {"nlist": 8, "merge_min": 0},
    "hnsw": {"M": 16, "merge_min": 0},
}


def unit(rng: np.random.Generator, n: int, d: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def sha(i: int, tag: str = "") -> str:
    return hashlib.sha256(f"{tag}{i}".encode()).hexdigest()


def records(start: int, n: int, tag: str = "", labels: tuple[str, ...] = ()) -> list[ReferenceRecord]:
    return [
        ReferenceRecord(sha256=sha(i, tag), uri=f"file:///ref/{tag}{i}.jpg", labels=labels)
        for i in range(start, start + n)
    ]


def near(rng: np.random.Generator, x: np.ndarray, cos: float) -> np.ndarray:
    from id2_plugin.stores.tuning import perturbed_queries

    return perturbed_queries(x, cos, rng)


@pytest.mark.parametrize("kind", list(SMALL))
def test_add_query_remove_dedupe(tmp_path: Path, kind: str) -> None:
    rng = np.random.default_rng(1)
    x = unit(rng, 800)
    store = FaissStore(tmp_path / "s", EMB, DIM, index=kind, index_options=SMALL[kind], create=True)
    first = store.add(x[:500], records(0, 500, labels=("cat", "nsfw")))
    assert first.added == tuple(str(i) for i in range(500)) and first.duplicates == ()
    # second batch: 300 new, 20 already stored, and 5 repeated inside the batch itself
    batch = np.concatenate([x[500:800], x[:20], x[500:505]])
    recs = records(500, 300) + records(0, 20) + records(500, 5)
    second = store.add(batch, recs)
    assert len(second.added) == 300 and len(second.duplicates) == 25
    assert set(second.duplicates) == {sha(i) for i in range(20)} | {sha(i) for i in range(500, 505)}
    info = store.info()
    assert info.count == 800 and info.index_type == kind and info.dim == DIM and info.embedder == EMB
    if kind in ("ivf_flat", "ivf_pq", "ivf_pq_fs"):
        assert info.extra["trained"] is True and info.extra["nlist"] == 8
    if kind != "flat" and kind != "flat_fp16":
        assert info.extra["search"].startswith("approximate")

    q = near(rng, x[:200], 0.95)
    res = store.query(q, k=5)
    assert len(res) == 200
    top1 = np.mean([r[0].reference_id == str(i) for i, r in enumerate(res)])
    assert top1 >= (1.0 if kind in ("flat", "flat_fp16") else 0.9), top1
    for r in res:
        assert [m.rank for m in r] == list(range(1, len(r) + 1))
        assert all(a.score >= b.score for a, b in zip(r, r[1:]))
    m = res[3][0]
    assert m.reference_id == "3" and m.sha256 == sha(3) and m.uri == "file:///ref/3.jpg" and m.labels == ("cat", "nsfw")
    assert abs(m.score - float(q[3] @ x[3])) < 2e-3  # scores are true cosines (fp16 storage at worst)

    thr = store.query(q[:20], k=5, threshold=0.9)
    assert all(all(mm.score >= 0.9 for mm in r) for r in thr) and all(len(r) >= 1 for r in thr)
    # the threshold only drops matches (their metadata is not even read): the rest is the unthresholded answer
    assert thr == [[mm for mm in r if mm.score >= 0.9] for r in store.query(q[:20], k=5)]
    assert any(len(r) < 5 for r in thr)

    assert store.contains([sha(0), sha(799), sha(12345), ""]) == [True, True, False, False]
    # remove by id, by sha256, plus an unknown key
    assert store.remove(["0", "1", sha(2), sha(600), "999999", "not-a-key"]) == 4
    assert store.remove(["0"]) == 0
    assert store.info().count == 796
    assert store.contains([sha(0), sha(2), sha(3)]) == [False, False, True]
    gone = {"0", "1", "2", "600"}
    for r in store.query(x[[0, 1, 2, 600]], k=10):
        assert gone.isdisjoint(mm.reference_id for mm in r)
    # a removed reference can be added again (new id)
    again = store.add(x[:1], records(0, 1))
    assert again.added == ("800",)
    assert store.query(x[:1], k=1)[0][0].reference_id == "800"
    store.close()

    # reopening without identity (read-only use) sees the same contents
    with FaissStore(tmp_path / "s") as reopened:
        assert reopened.info().count == 797 and reopened.index_type == kind
        r = reopened.query(x[[3, 700]], k=1)
        assert [r[0][0].reference_id, r[1][0].reference_id] == ["3", "700"]


def test_flat_is_exact_and_float32(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    x = unit(rng, 300)
    q = unit(rng, 10)
    with FaissStore(tmp_path / "s", EMB, DIM, create=True) as store:
        store.add(x, records(0, 300))
        res = store.query(q, k=4)
    exact = q @ x.T
    for i, r in enumerate(res):
        order = np.argsort(-exact[i])[:4]
        assert [int(m.reference_id) for m in r] == order.tolist()
        np.testing.assert_allclose([m.score for m in r], exact[i, order], atol=1e-5)
    assert (tmp_path / "s" / "vectors.0.f32").stat().st_size == 300 * DIM * 4


def test_ivf_below_train_min_is_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    x = unit(rng, 500)
    with FaissStore(tmp_path / "s", EMB, DIM, index="ivf_pq", create=True) as store:
        store.add(x, records(0, 500))
        info = store.info()
        assert info.extra["trained"] is False and info.extra["train_min"] >= 20_000
        assert info.extra["search"].startswith("exact (untrained: 500 < train_min")
        assert not list((tmp_path / "s").glob("main.*.faiss"))
        q = unit(rng, 5)
        res = store.query(q, k=3)
    exact = np.argsort(-(q @ x.T), axis=1)[:, :3]
    assert [[int(m.reference_id) for m in r] for r in res] == exact.tolist()


def test_ivf_trains_when_it_reaches_train_min_and_retrains_on_growth(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    x = unit(rng, 1400)
    opts = {"nlist": 8, "merge_min": 0, "train_min": 300, "retrain_growth": 4.0}
    with FaissStore(tmp_path / "s", EMB, DIM, index="ivf_flat", index_options=opts, create=True) as store:
        store.add(x[:200], records(0, 200))
        assert store.info().extra["trained"] is False
        store.add(x[200:350], records(200, 150))
        info = store.info()
        assert info.extra["trained"] is True and info.extra["trained_on"] == 350
        store.add(x[350:1400], records(350, 1050))  # 1400 >= 4 * 350: retrained on a fresh sample,
        assert store.info().extra["trained_on"] == 8 * 64  # capped at max_train_per_list * nlist
        res = store.query(x[:50], k=1)
        assert np.mean([r[0].reference_id == str(i) for i, r in enumerate(res)]) >= 0.95


def test_buffer_is_merged_by_policy_and_compact(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    x = unit(rng, 700)
    opts = {"M": 16, "merge_min": 300, "merge_ratio": 0.5}
    with FaissStore(tmp_path / "s", EMB, DIM, index="hnsw", index_options=opts, create=True) as store:
        store.add(x[:200], records(0, 200))
        assert store.info().extra["search"].startswith("exact (graph not built yet")
        store.add(x[200:400], records(200, 200))  # 400 >= merge_min: graph built
        assert store.info().extra["indexed"] == 400
        store.add(x[400:600], records(400, 200))  # buffer 200 < max(300, 0.5 * 400)
        info = store.info()
        assert info.extra["indexed"] == 400 and info.extra["exact_buffer"] == 200
        res = store.query(x[[10, 500]], k=1)  # one answer from the graph, one from the buffer
        assert [r[0].reference_id for r in res] == ["10", "500"]
        assert store.compact() == "fold"
        assert store.info().extra["exact_buffer"] == 0
        assert store.compact() is None


def test_hnsw_tombstones_filtered_then_rebuilt(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    x = unit(rng, 600)
    opts = {"M": 16, "merge_min": 0, "tombstone_ratio": 0.1}
    with FaissStore(tmp_path / "s", EMB, DIM, index="hnsw", index_options=opts, create=True) as store:
        store.add(x, records(0, 600))
        assert store.remove([str(i) for i in range(30)]) == 30  # 5% of the graph: kept as tombstones
        assert store.info().extra["tombstones"] == 30
        for r in store.query(x[:30], k=5):
            assert all(int(m.reference_id) >= 30 for m in r)
        snap_before = sorted(p.name for p in (tmp_path / "s").glob("main.*.faiss"))
    with FaissStore(tmp_path / "s", index_options={"tombstone_ratio": 0.1}) as reader:  # reload applies them
        for r in reader.query(x[:30], k=5):
            assert all(int(m.reference_id) >= 30 for m in r)
    with FaissStore(tmp_path / "s", EMB, DIM, index_options=opts) as store:
        store.remove([str(i) for i in range(30, 100)])  # 100 / 600 > 10%: the graph is rebuilt without them
        info = store.info()
        assert info.extra["tombstones"] == 0 and info.count == 500 and info.extra["indexed"] == 500
        assert sorted(p.name for p in (tmp_path / "s").glob("main.*.faiss")) != snap_before
        res = store.query(x[100:110], k=1)
        assert [r[0].reference_id for r in res] == [str(i) for i in range(100, 110)]


def test_identity_and_dimension_are_enforced(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    with FaissStore(tmp_path / "s", EMB, DIM, create=True) as store:
        store.add(unit(rng, 5), records(0, 5))
        with pytest.raises(IncompatibleStoreError, match="configured embedder"):
            store.check_compatible("other-embedder")
        with pytest.raises(IncompatibleStoreError, match="dimension"):
            store.query(unit(rng, 2, 32))
        with pytest.raises(IncompatibleStoreError):
            store.add(unit(rng, 2, 32), records(10, 2))
    with pytest.raises(IncompatibleStoreError, match="other-embedder"):
        FaissStore(tmp_path / "s", "other-embedder", DIM)
    with pytest.raises(IncompatibleStoreError, match="128-dim"):
        FaissStore(tmp_path / "s", EMB, 128, create=True)
    with FaissStore(tmp_path / "s") as read_only:
        with pytest.raises(IncompatibleStoreError):
            read_only.check_compatible("other-embedder")
        with pytest.raises(StoreError, match="without an embedder identity"):
            read_only.add(unit(rng, 1), records(20, 1))


def test_missing_and_invalid_stores(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"no reference store at .*nope; create it with `id2-plugin index add`"):
        FaissStore(tmp_path / "nope")
    assert not (tmp_path / "nope").exists()
    with pytest.raises(StoreError, match="needs the embedder identity"):
        FaissStore(tmp_path / "new", None, None, create=True)
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"x")
    with pytest.raises(StoreError, match="not empty"):
        FaissStore(tmp_path / "photos", EMB, DIM, create=True)
    with pytest.raises(ConfigError, match="store.index="):
        FaissStore(tmp_path / "x", EMB, DIM, index="annoy", create=True)
    with pytest.raises(ConfigError, match="store.index_options.nprobee"):
        FaissStore(tmp_path / "x", EMB, DIM, index="ivf_flat", index_options={"nprobee": 3}, create=True)
    with pytest.raises(ConfigError, match="must divide"):
        FaissStore(tmp_path / "x", EMB, 60, index="ivf_pq", index_options={"m": 7}, create=True)
    with FaissStore(tmp_path / "x", EMB, DIM, create=True) as store:
        with pytest.raises(ValueError, match="NaN"):
            store.query(np.full((1, DIM), np.nan, np.float32))
        with pytest.raises(ValueError, match="records"):
            store.add(np.zeros((2, DIM), np.float32), records(0, 1))


def test_store_meta_wins_over_config_on_open(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    with FaissStore(
        tmp_path / "s", EMB, DIM, index="ivf_flat", index_options={"nlist": 8, "merge_min": 0}, create=True
    ) as s:
        s.add(unit(rng, 400), records(0, 400))
    # a config for another index type: the store keeps its own type and build options
    opts = {"nlist": 64, "nprobe": 3, "efSearch": 10}
    with FaissStore(tmp_path / "s", EMB, DIM, index="hnsw", index_options=opts, create=True) as s:
        info = s.info()
        assert info.index_type == "ivf_flat" and info.extra["nlist"] == 8
        assert info.extra["search_params"]["nprobe"] == 3  # search-time options do apply


def test_open_store_through_the_plugin_registry(tmp_path: Path) -> None:
    from id2_plugin.assembly import open_store
    from id2_plugin.config import StoreConfig

    cfg = StoreConfig(path=str(tmp_path / "s"), index="flat_fp16")
    with open_store(cfg, embedder_identity=EMB, dim=DIM, create=True) as store:
        assert isinstance(store, FaissStore) and store.index_type == "flat_fp16"
    with open_store(cfg, embedder_identity=None, dim=None, create=False) as store:
        assert store.info().count == 0


def test_writer_lock_times_out(tmp_path: Path) -> None:
    import filelock

    rng = np.random.default_rng(9)
    store = FaissStore(tmp_path / "s", EMB, DIM, index_options={"lock_timeout": 0.2}, create=True)
    held = filelock.FileLock(str(tmp_path / "s" / "write.lock"))
    with held:
        with pytest.raises(StoreError, match="locked by another writer"):
            store.add(unit(rng, 3), records(0, 3))
    assert store.add(unit(rng, 3), records(0, 3)).added == ("0", "1", "2")
    assert store.info().count == 3
    store.close()


def test_persistence_across_processes(tmp_path: Path) -> None:
    rng = np.random.default_rng(10)
    x = unit(rng, 400)
    with FaissStore(
        tmp_path / "s", EMB, DIM, index="ivf_flat", index_options={"nlist": 8, "merge_min": 0}, create=True
    ) as s:
        s.add(x, records(0, 400))
        s.remove(["7"])
        expected = [[m.reference_id for m in r] for r in s.query(x[:20], k=3)]
    np.save(tmp_path / "q.npy", x[:20])
    script = f"""
import json, numpy as np
from id2_plugin.stores.faiss_store import FaissStore
s = FaissStore({str(tmp_path / "s")!r})
res = s.query(np.load({str(tmp_path / "q.npy")!r}), k=3)
print(json.dumps({{"ids": [[m.reference_id for m in r] for r in res], "count": s.info().count}}))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["count"] == 399 and got["ids"] == expected
    assert "7" not in got["ids"][7]


def test_reader_retries_when_a_snapshot_vanishes_while_loading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import faiss

    rng = np.random.default_rng(11)
    x = unit(rng, 400)
    with FaissStore(
        tmp_path / "s", EMB, DIM, index="ivf_flat", index_options={"nlist": 8, "merge_min": 0}, create=True
    ) as s:
        s.add(x, records(0, 400))
    real = faiss.read_index
    calls: list[str] = []

    def flaky(path: str, *args: object) -> object:
        calls.append(path)
        if len(calls) == 1:  # what a writer deleting the file under us looks like
            raise RuntimeError(f"Error: could not open {path} for reading: No such file or directory")
        return real(path, *args)

    monkeypatch.setattr(faiss, "read_index", flaky)
    with FaissStore(tmp_path / "s") as reader:
        assert reader.query(x[5], k=1)[0][0].reference_id == "5"
    assert len(calls) == 2


@pytest.mark.parametrize("kind", ["flat", "ivf_pq"])
def test_fetch_vectors_returns_the_stored_rows(tmp_path: Path, kind: str) -> None:
    rng = np.random.default_rng(5)
    x = unit(rng, 300)
    store = FaissStore(tmp_path / "s", EMB, DIM, index=kind, index_options=SMALL[kind], create=True)
    ids = store.add(x, records(0, 300)).added
    got = store.fetch_vectors([ids[7], ids[250], ids[7]])
    # the raw vectors, not the compressed index codes: exact for flat, float16 for the others
    np.testing.assert_allclose(got, x[[7, 250, 7]], atol=1e-3 if kind != "flat" else 0)
    assert store.fetch_vectors([]).shape == (0, DIM)
    with pytest.raises(StoreError, match="unknown reference id"):
        store.fetch_vectors(["999999"])
    store.close()
