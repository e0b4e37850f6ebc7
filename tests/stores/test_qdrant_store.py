"""QdrantStore on qdrant-client's embedded modes (local folder and :memory:) — no server, no network."""

from __future__ import annotations

import gc
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("qdrant_client")

from id2_plugin.assembly import open_store
from id2_plugin.config import StoreConfig
from id2_plugin.errors import ConfigError, IncompatibleStoreError, StoreError
from id2_plugin.stores.qdrant_store import QdrantStore, point_id
from id2_plugin.types import ReferenceRecord

DIM = 64
EMB = "test-embedder@0123456789abcdef/256/squash+raw"


def unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def records(n: int, start: int = 0, labels: tuple[str, ...] = ()) -> list[ReferenceRecord]:
    return [
        ReferenceRecord(sha256=hashlib.sha256(f"ref-{i}".encode()).hexdigest(), uri=f"/refs/{i}.jpg", labels=labels)
        for i in range(start, start + n)
    ]


@pytest.fixture(params=["path", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path):
    location = str(tmp_path / "qdrant") if request.param == "path" else ":memory:"
    s = QdrantStore(location, embedder_identity=EMB, dim=DIM, create=True)
    yield s
    s.close()


def test_add_then_query_ranks_like_brute_force(store: QdrantStore, rng: np.random.Generator) -> None:
    refs = unit(rng, 200)
    recs = records(200, labels=("set-a",))
    res = store.add(refs, recs)
    assert len(res.added) == 200 and res.duplicates == ()
    assert res.added[7] == point_id(recs[7].sha256)
    queries = unit(rng, 5)
    out = store.query(queries, k=10)
    expected = np.argsort(-(queries @ refs.T), axis=1)[:, :10]
    for q, matches in enumerate(out):
        assert [m.rank for m in matches] == list(range(1, 11))
        assert [m.uri for m in matches] == [recs[i].uri for i in expected[q]]
        np.testing.assert_allclose([m.score for m in matches], (queries[q] @ refs[expected[q]].T), atol=1e-5)
        assert all(m.labels == ("set-a",) for m in matches)
        assert matches[0].sha256 == recs[expected[q][0]].sha256
    info = store.info()
    assert (info.backend, info.count, info.dim, info.embedder, info.index_type) == ("qdrant", 200, DIM, EMB, "flat")


def test_noisy_copy_finds_its_reference(store: QdrantStore, rng: np.random.Generator) -> None:
    refs = unit(rng, 100)
    store.add(refs, records(100))
    noisy = refs[[3, 42]] + 0.05 * rng.standard_normal((2, DIM)).astype(np.float32)
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    top = store.query(noisy, k=1)
    assert [t[0].uri for t in top] == ["/refs/3.jpg", "/refs/42.jpg"]
    assert all(t[0].score > 0.9 for t in top)


def test_readding_same_content_is_a_noop(store: QdrantStore, rng: np.random.Generator) -> None:
    v = unit(rng, 10)
    recs = records(10)
    first = store.add(v[:6], recs[:6])
    # A resumed bulk add repeats the first 6 and brings 4 new: only the new ones are added.
    again = store.add(v, recs)
    assert len(first.added) == 6
    assert len(again.added) == 4 and set(again.duplicates) == {r.sha256 for r in recs[:6]}
    assert store.info().count == 10
    # Same content twice in one call: stored once, the second copy reported as a duplicate.
    extra = records(1, start=100)
    dup = store.add(np.stack([v[0], v[0]]), [extra[0], extra[0]])
    assert len(dup.added) == 1 and dup.duplicates == (extra[0].sha256,)
    assert store.info().count == 11
    assert store.contains([recs[0].sha256, extra[0].sha256, records(1, start=999)[0].sha256, ""]) == [
        True,
        True,
        False,
        False,
    ]


def test_threshold_and_k(store: QdrantStore, rng: np.random.Generator) -> None:
    refs = unit(rng, 50)
    store.add(refs, records(50))
    q = refs[:1]
    scores = np.sort(refs @ q[0])[::-1]
    thr = float((scores[2] + scores[3]) / 2)  # exactly three references score above it
    out = store.query(q, k=10, threshold=thr)[0]
    assert len(out) == 3 and all(m.score >= thr for m in out)
    assert out[0].uri == "/refs/0.jpg" and out[0].score == pytest.approx(1.0, abs=1e-6)
    assert len(store.query(q, k=2, threshold=-1.0)[0]) == 2
    assert store.query(-q, k=5, threshold=0.99) == [[]]
    with pytest.raises(ValueError):
        store.query(q, k=0)
    with pytest.raises(ValueError):
        store.query(unit(rng, 1, dim=DIM + 1))


def test_remove_by_reference_id_or_sha256(store: QdrantStore, rng: np.random.Generator) -> None:
    v = unit(rng, 5)
    recs = records(5)
    added = store.add(v, recs).added
    n = store.remove([added[0], recs[1].sha256.upper(), "not-a-key", records(1, start=77)[0].sha256])
    assert n == 2
    assert store.contains([r.sha256 for r in recs]) == [False, False, True, True, True]
    assert store.remove([added[0]]) == 0
    assert all(m.uri not in ("/refs/0.jpg", "/refs/1.jpg") for m in store.query(v, k=5)[0])
    # A removed reference can be added again.
    assert len(store.add(v[:1], recs[:1]).added) == 1
    assert store.get(recs[0].sha256).uri == "/refs/0.jpg"


def test_persists_across_reopen(tmp_path: Path, rng: np.random.Generator) -> None:
    loc = str(tmp_path / "q")
    v = unit(rng, 20)
    with QdrantStore(loc, embedder_identity=EMB, dim=DIM, index="hnsw", create=True, collection="refs") as s:
        s.add(v, records(20, labels=("x",)))
    # Reopen without identity (as `index info` does): metadata comes from the collection itself.
    with QdrantStore(loc, collection="refs") as s:
        info = s.info()
        assert (info.count, info.dim, info.embedder, info.index_type) == (20, DIM, EMB, "hnsw")
        assert info.extra["collection"] == "refs" and info.extra["distance"] == "cosine"
        m = s.query(v[5:6], k=1)[0][0]
        assert m.uri == "/refs/5.jpg" and m.labels == ("x",)
        assert s.get(m.reference_id).added_at
    # Another collection in the same folder is independent.
    with pytest.raises(StoreError, match="does not exist"):
        QdrantStore(loc, collection="other")


def test_incompatible_embedder_is_refused(tmp_path: Path, rng: np.random.Generator) -> None:
    loc = str(tmp_path / "q")
    QdrantStore(loc, embedder_identity=EMB, dim=DIM, create=True).close()
    with pytest.raises(IncompatibleStoreError, match="built with the"):
        QdrantStore(loc, embedder_identity="other-embedder+W@1", dim=DIM, create=True)
    with pytest.raises(IncompatibleStoreError, match="64-dim"):
        QdrantStore(loc, embedder_identity=EMB, dim=128)
    with QdrantStore(loc) as s:
        with pytest.raises(IncompatibleStoreError):
            s.check_compatible("other-embedder+W@1")
        s.check_compatible(EMB)
        with pytest.raises(ValueError, match="sha256"):
            s.add(unit(rng, 1), [ReferenceRecord(sha256="abc", uri="x")])


def test_open_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(StoreError, match="no qdrant store"):
        QdrantStore(str(missing), embedder_identity=EMB, dim=DIM, create=False)
    assert not missing.exists()
    with pytest.raises(ConfigError, match="nlist"):
        QdrantStore(str(tmp_path / "a"), embedder_identity=EMB, dim=DIM, create=True, index_options={"nlist": 4})
    with pytest.raises(ConfigError, match="ivf_pq"):
        QdrantStore(str(tmp_path / "b"), embedder_identity=EMB, dim=DIM, create=True, index="ivf_pq")
    loc = str(tmp_path / "c")
    with QdrantStore(loc, embedder_identity=EMB, dim=DIM, create=True):
        # Embedded mode locks the folder: a second opener gets a clear StoreError, not a raw RuntimeError.
        with pytest.raises(StoreError, match="cannot open"):
            QdrantStore(loc)


def test_unreachable_server_is_a_store_error() -> None:
    # A closed port on loopback: the client's transport error surfaces as one clear StoreError.
    with pytest.raises(StoreError, match=r"http://127\.0\.0\.1:9"):
        QdrantStore("http://127.0.0.1:9", embedder_identity=EMB, dim=DIM, create=True, index_options={"timeout": 2})


def test_foreign_collection_is_not_written_into(tmp_path: Path) -> None:
    from qdrant_client import QdrantClient, models

    loc = tmp_path / "q"
    client = QdrantClient(path=str(loc))
    client.create_collection("theirs", vectors_config=models.VectorParams(size=DIM, distance=models.Distance.COSINE))
    client.close()
    with pytest.raises(StoreError, match="not created by id2-plugin"):
        QdrantStore(str(loc), embedder_identity=EMB, dim=DIM, create=True, collection="theirs")


def test_dot_distance_and_int8_index(tmp_path: Path, rng: np.random.Generator) -> None:
    v = unit(rng, 30)
    with QdrantStore(
        str(tmp_path / "q"),
        embedder_identity=EMB,
        dim=DIM,
        create=True,
        index="hnsw_int8",
        index_options={"distance": "dot", "m": 8, "ef_construct": 32, "upsert_batch": 7},
    ) as s:
        assert len(s.add(v, records(30)).added) == 30  # 5 upsert requests of <= 7 points
        top = s.query(v[:3], k=1)
        assert [t[0].uri for t in top] == ["/refs/0.jpg", "/refs/1.jpg", "/refs/2.jpg"]
        assert s.info().extra["distance"] == "dot" and s.info().index_type == "hnsw_int8"


def test_registered_backend_via_open_store(tmp_path: Path, rng: np.random.Generator) -> None:
    cfg = StoreConfig(backend="qdrant", url=str(tmp_path / "q"), collection="refs")
    with open_store(cfg, embedder_identity=EMB, dim=DIM, create=True) as s:
        assert isinstance(s, QdrantStore)
        s.add(unit(rng, 3), records(3))
    # store.path is the fallback location when store.url is not set.
    cfg = StoreConfig(backend="qdrant", path=str(tmp_path / "q"), collection="refs")
    with open_store(cfg, embedder_identity=None, dim=None, create=False) as s:
        assert s.info().count == 3


def _jpeg_degrade(src: Path, dst: Path) -> None:
    img = Image.open(src).convert("RGB")
    w, h = img.size
    img.resize((int(w * 0.7), int(h * 0.7))).save(dst, quality=35)


def test_cli_index_and_query_real_photos(tmp_path: Path, photo_paths: list[Path]) -> None:
    """End to end with the real TAEF2 embedder: index 10 photos in Qdrant, find a JPEG-degraded copy."""
    from click.testing import CliRunner

    from id2_plugin.cli import cli, load_commands

    load_commands()
    refs = photo_paths[100:110]
    loc = str(tmp_path / "qdrant")
    base = ["--set", "store.backend=qdrant", "--set", f"store.url={loc}", "--set", "store.collection=photos"]
    runner = CliRunner()
    r = runner.invoke(cli, [*base, "index", "add", "--label", "ref", *map(str, refs)])
    assert r.exit_code == 0, r.output
    assert "added 10, duplicates skipped 0, failed 0" in r.output
    r = runner.invoke(cli, [*base, "index", "info", "--json"])
    assert r.exit_code == 0 and '"count": 10' in r.output and '"backend": "qdrant"' in r.output, r.output

    query = tmp_path / "degraded.jpg"
    _jpeg_degrade(refs[3], query)
    r = runner.invoke(cli, [*base, "query", "--json", "--k", "3", str(query)])
    assert r.exit_code in (0, 1), r.output
    report = json.loads(r.output.strip().splitlines()[-1])
    assert report["best"]["uri"] == str(refs[3].resolve())
    assert report["best"]["sha256"] == hashlib.sha256(refs[3].read_bytes()).hexdigest()
    assert report["best"]["labels"] == ["ref"]
    assert report["matches"][0]["score"] > report["matches"][1]["score"]

    # `query` leaves closing its store to process exit; in-process, the result's traceback keeps that store
    # (and the embedded-mode folder lock) alive until collected.
    del r
    gc.collect()
    r = runner.invoke(cli, [*base, "index", "remove", str(refs[3])])
    assert r.exit_code == 0 and "removed 1 of 1" in r.output, r.output


def test_fetch_vectors_returns_the_stored_points(store: QdrantStore, rng: np.random.Generator) -> None:
    refs = unit(rng, 20)
    ids = store.add(refs, records(20)).added
    got = store.fetch_vectors([ids[3], ids[11]])
    np.testing.assert_allclose(got, refs[[3, 11]], atol=1e-6)
    with pytest.raises(StoreError, match="unknown reference id"):
        store.fetch_vectors([point_id("0" * 64)])
