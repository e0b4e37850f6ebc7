"""A truncated or missing store file is detected before any write, reported by info/verify, and repaired."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from id2_plugin.errors import StoreDamagedError
from id2_plugin.stores.faiss_store import FaissStore
from id2_plugin.types import ReferenceRecord

DIM = 16
EMB = "test-embedder@0123/256/squash"
HNSW = ("hnsw", {"merge_min": 10})


def _vectors(n: int) -> np.ndarray:
    x = np.random.default_rng(7).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _records(a: int, b: int) -> list[ReferenceRecord]:
    return [ReferenceRecord(sha256=hashlib.sha256(str(i).encode()).hexdigest(), uri=f"ref/{i}") for i in range(a, b)]


def _store(path: Path, kind: str = "flat", opts: dict | None = None, n: int = 40) -> FaissStore:
    s = FaissStore(path, EMB, DIM, index=kind, index_options=opts or {}, create=True)
    s.add(_vectors(n), _records(0, n))
    s.close()
    return FaissStore(path, EMB, DIM)


def _halve(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


@pytest.mark.parametrize("kind,opts", [("flat", {}), ("flat_fp16", {}), HNSW])
def test_add_to_truncated_vector_file_is_refused_and_repair_drops_only_lost_rows(
    tmp_path: Path, kind: str, opts: dict
) -> None:
    store = _store(tmp_path / "s", kind, opts)
    raw = next((tmp_path / "s").glob("vectors.*"))
    _halve(raw)
    size, gen = raw.stat().st_size, store.info().generation
    assert store.info().extra["status"].startswith("damaged: vectors.0.")
    with pytest.raises(StoreDamagedError, match=r"holds 20 of the 40 committed vectors.*index verify --repair"):
        store.add(_vectors(60)[40:], _records(40, 60))
    assert raw.stat().st_size == size and store.info().generation == gen  # nothing written
    with pytest.raises(StoreDamagedError):
        store.remove(["3"])
    assert store.verify() and "truncated" in store.verify()[0]

    done = store.repair()
    assert done[0].startswith("dropped 20 reference(s)") and store.verify() == []
    assert store.info().count == 20 and store.info().extra["status"] == "ok"
    x = _vectors(60)
    assert [r[0].reference_id for r in store.query(x[[0, 19]], k=1)] == ["0", "19"]  # kept rows still found
    assert store.contains([_records(25, 26)[0].sha256]) == [False]  # a lost one can be added again
    added = store.add(x[20:60], _records(20, 60)).added
    assert len(added) == 40 and store.query(x[25:26], k=1)[0][0].uri == "ref/25"
    assert FaissStore(tmp_path / "s").verify() == []


def test_truncated_or_missing_ann_snapshot_is_damage_and_is_rebuilt(tmp_path: Path) -> None:
    store = _store(tmp_path / "s", *HNSW)
    snap = next((tmp_path / "s").glob("main.*.faiss"))
    os.truncate(snap, snap.stat().st_size - 100)
    assert "main." in store.info().extra["status"] and "truncated" in store.info().extra["status"]
    with pytest.raises(StoreDamagedError):
        store.add(_vectors(41)[40:], _records(40, 41))
    assert store.repair() == ["rebuilt the hnsw index from the 40 stored vectors"]
    assert store.verify() == [] and store.info().count == 40
    assert store.query(_vectors(40)[[7]], k=1)[0][0].reference_id == "7"
    next((tmp_path / "s").glob("main.*.faiss")).unlink()
    assert FaissStore(tmp_path / "s").info().extra["status"].startswith("damaged: main.")


def test_a_sound_store_verifies_and_repair_does_nothing(tmp_path: Path) -> None:
    store = _store(tmp_path / "s", *HNSW)
    gen = store.info().generation
    assert store.verify() == [] and store.repair() == [] and store.info().generation == gen


def _damage_row(path: Path, row: np.ndarray, scale: float = 30.0) -> None:
    """Overwrite the bytes of one stored vector (found by content) with a scaled copy: a flipped exponent."""
    data = path.read_bytes()
    at = data.find(row.astype(np.float32).tobytes())
    assert at > 0
    path.write_bytes(data[:at] + (row * scale).astype(np.float32).tobytes() + data[at + row.nbytes :])


def test_damaged_vector_rows_are_refused_at_load_found_by_verify_and_dropped_by_repair(tmp_path: Path) -> None:
    x = _vectors(200)
    _store(tmp_path / "s", n=200).close()
    _damage_row(tmp_path / "s" / "vectors.0.f32", x[100])
    store = FaissStore(tmp_path / "s")
    with pytest.raises(StoreDamagedError, match=r"reference\(s\) \[100\] are not unit vectors.*verify --repair"):
        store.query(x[100:101], k=1)  # never a cosine of 30
    assert store.verify() == [
        "vectors.0.f32: the vectors of 1 reference(s) do not match their checksum (ids [100]): content damaged",
        "vectors.0.f32: the vectors of 1 reference(s) are not unit vectors (ids [100]): content damaged",
    ]

    done = store.repair()
    assert done[0] == (
        "dropped 1 reference(s) whose vectors were damaged (cannot be recovered: add them again): 100 ('ref/100')"
    )
    assert store.verify() == [] and store.info().count == 199
    assert store.query(x[[5, 150]], k=1)[0][0].reference_id == "5"
    assert max(m.score for r in store.query(x, k=3) for m in r) <= 1.0 + 1e-6
    assert FaissStore(tmp_path / "s", EMB, DIM).add(x[100:101], _records(100, 101)).added  # added again


def test_removals_and_appends_keep_checksums_sound(tmp_path: Path) -> None:
    x = _vectors(400)
    store = _store(tmp_path / "s", n=250)
    store.add(x[250:300], _records(250, 300))  # across a block boundary (256 rows)
    assert store.remove(["3", "255", "299"]) == 3
    assert store.verify() == []
    _damage_row(tmp_path / "s" / "vectors.0.f32", x[280], scale=-1.0)  # norm kept: only the checksum sees it
    assert store.verify() == [
        "vectors.0.f32: the vectors of 1 reference(s) do not match their checksum (ids [280]): content damaged"
    ]
    assert store.repair()[0].endswith("280 ('ref/280')") and store.verify() == [] and store.info().count == 296
    store.close()
    with sqlite3.connect(tmp_path / "s" / "store.sqlite") as conn:  # a store made before checksums were kept
        conn.execute("DROP TABLE checksums")
    conn.close()
    store = FaissStore(tmp_path / "s", EMB, DIM)
    assert store.verify() == []
    store.add(x[300:400], _records(300, 400))
    _damage_row(tmp_path / "s" / "vectors.0.f32", x[350], scale=-1.0)
    assert store.verify()[0].endswith("do not match their checksum (ids [350]): content damaged")


@pytest.mark.parametrize("kind,opts", [HNSW, ("ivf_flat", {"nlist": 2, "train_min": 40, "merge_min": 10})])
def test_damaged_ann_snapshot_never_scores_above_one_and_is_rebuilt(tmp_path: Path, kind: str, opts: dict) -> None:
    x = _vectors(40)
    _store(tmp_path / "s", kind, opts).close()
    snap = next((tmp_path / "s").glob("main.*.faiss"))
    _damage_row(snap, x[7].astype(np.float16).astype(np.float32))  # the snapshot is built from float16 rows
    store = FaissStore(tmp_path / "s")
    with pytest.raises(StoreDamagedError, match=r"reference.*7.*(not unit vectors|scores a cosine of 30)"):
        store.query(x[7:8], k=1)
    assert store.verify() == [f"{snap.name} does not match its checksum: content damaged"]
    assert store.repair() == [f"rebuilt the {kind} index from the 40 stored vectors"]
    assert store.verify() == [] and store.query(x[7:8], k=1)[0][0].score == pytest.approx(1.0, abs=1e-5)


def test_files_of_a_failed_creation_are_removed(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    stale = [tmp_path / "s" / f"store.sqlite.4242.tmp{suffix}" for suffix in ("", "-wal", "-shm")]
    for p in stale:
        p.write_bytes(b"x" * 10)
    _store(tmp_path / "s").close()
    assert not any(p.exists() for p in stale)
    stale[1].write_bytes(b"x")  # left while the store exists: the next writer removes it
    FaissStore(tmp_path / "s", EMB, DIM).add(_vectors(41)[40:], _records(40, 41))
    assert not stale[1].exists()
