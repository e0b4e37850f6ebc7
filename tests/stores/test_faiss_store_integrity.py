"""A truncated or missing store file is detected before any write, reported by info/verify, and repaired."""

from __future__ import annotations

import hashlib
import os
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
def test_add_to_truncated_vector_file_is_refused_and_repair_drops_only_lost_rows(tmp_path: Path, kind: str, opts: dict) -> None:
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
