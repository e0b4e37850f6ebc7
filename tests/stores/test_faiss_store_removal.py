"""A removed reference's embedding is gone: never returned, never fetched, not left in any store file."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from id2_plugin.errors import StoreError
from id2_plugin.stores import _faiss_writer
from id2_plugin.stores.faiss_store import FaissStore
from id2_plugin.types import ReferenceRecord

#: every index layout: raw float32 only; float16 raw + an HNSW snapshot that keeps the removed node as a
#: tombstone (high tombstone_ratio) or is rebuilt without it; float16 raw + a trained IVF snapshot
LAYOUTS = {
    "flat": ("flat", {}),
    "hnsw_tombstone": ("hnsw", {"M": 8, "merge_min": 0, "tombstone_ratio": 0.9}),
    "hnsw_rebuilt": ("hnsw", {"M": 8, "merge_min": 0, "tombstone_ratio": 0.1}),
    "ivf_flat": ("ivf_flat", {"nlist": 2, "train_min": 6, "merge_min": 0}),
}


@pytest.fixture(scope="module")
def photo_vectors(shared_dir: Path, photo_paths: list[Path]) -> tuple[str, list[Path], np.ndarray]:
    """Eight real photos embedded by TAEF2 at 64 px (raw latent: cheap, and the most invertible case)."""
    from id2_plugin.assembly import build_embedder
    from id2_plugin.config import EmbedderConfig

    emb = build_embedder(EmbedderConfig(input_size=64, projection="none", allow_raw_latent=True, device="cpu"))
    paths = photo_paths[100:108]
    return emb.identity, paths, emb.embed(paths)


def _filled(tmp_path: Path, layout: str, photo_vectors) -> tuple[FaissStore, list[str], np.ndarray]:
    identity, paths, x = photo_vectors
    kind, opts = LAYOUTS[layout]
    store = FaissStore(tmp_path / "s", identity, x.shape[1], index=kind, index_options=opts, create=True)
    recs = [ReferenceRecord(sha256=hashlib.sha256(p.read_bytes()).hexdigest(), uri=p.name) for p in paths]
    ids = list(store.add(x, recs).added)
    return store, ids, x


def _stored_bytes(store: FaissStore, rid: str) -> list[bytes]:
    """A 64-byte slice of the reference's vector as each store file may hold it (float32 and float16)."""
    row = store.fetch_vectors([rid])[0]
    return [row.astype(np.float32)[200:216].tobytes(), row.astype(np.float16)[200:232].tobytes()]


def _files_holding(folder: Path, needles: list[bytes]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file() and any(n in p.read_bytes() for n in needles))


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_removed_vector_is_gone_from_results_and_files(tmp_path: Path, layout: str, photo_vectors) -> None:
    store, ids, x = _filled(tmp_path, layout, photo_vectors)
    kind = LAYOUTS[layout][0]
    folder = tmp_path / "s"
    needles = _stored_bytes(store, ids[3])
    held = _files_holding(folder, needles)
    assert any(n.startswith("vectors.") for n in held)  # the check can see a vector where it lies
    assert kind == "flat" or any(n.startswith("main.") for n in held)

    assert store.remove([ids[3]]) == 1
    assert store.info().extra.get("tombstones", 0) == (1 if layout == "hnsw_tombstone" else 0)
    assert _files_holding(folder, needles) == []
    raw = next(folder.glob("vectors.*"))
    rows = np.fromfile(raw, dtype=np.float32 if kind == "flat" else np.float16).reshape(len(ids), -1)
    assert not rows[3].any() and all(rows[i].any() for i in range(len(ids)) if i != 3)
    with pytest.raises(StoreError, match="unknown reference id"):
        store.fetch_vectors([ids[3]])
    assert store.verify() == []
    store.close()

    with FaissStore(folder) as reopened:  # a fresh load sees the same
        res = reopened.query(x, k=len(ids))
        assert all(ids[3] not in [m.reference_id for m in r] for r in res)
        assert [r[0].reference_id for i, r in enumerate(res) if i != 3] == [rid for i, rid in enumerate(ids) if i != 3]
        assert reopened.info().count == len(ids) - 1


def test_a_crash_before_the_scrub_is_finished_by_the_next_writer_and_verify_reports_it(
    tmp_path: Path, photo_vectors, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, ids, x = _filled(tmp_path, "flat", photo_vectors)
    needles, later = _stored_bytes(store, ids[5]), _stored_bytes(store, ids[6])

    def crash(stage: str) -> None:
        if stage == "scrub:start":
            raise KeyboardInterrupt  # stands in for a kill between the commit and the overwrite

    monkeypatch.setattr(_faiss_writer, "fault_hook", crash)
    with pytest.raises(KeyboardInterrupt):
        store.remove([ids[5]])
    monkeypatch.setattr(_faiss_writer, "fault_hook", None)
    assert store.info().count == len(ids) - 1  # the removal itself committed
    assert _files_holding(tmp_path / "s", needles) != []
    problems = store.verify()
    assert len(problems) == 1 and "still holds the vectors of 1 removed reference" in problems[0]

    assert store.repair() == ["overwrote the vectors of 1 removed reference(s) with zeros"]
    assert _files_holding(tmp_path / "s", needles) == [] and store.verify() == []

    monkeypatch.setattr(_faiss_writer, "fault_hook", crash)
    with pytest.raises(KeyboardInterrupt):
        store.remove([ids[6]])
    monkeypatch.setattr(_faiss_writer, "fault_hook", None)
    assert _files_holding(tmp_path / "s", later) != []
    store.compact()  # any later write finishes the overwrite first
    assert _files_holding(tmp_path / "s", later) == [] and store.verify() == []
    res = store.query(x[[0, 7]], k=1)
    assert [r[0].reference_id for r in res] == [ids[0], ids[7]]
