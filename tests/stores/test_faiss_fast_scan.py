"""The ``ivf_pq_fs`` index (IVF + 4-bit PQ fast-scan + exact re-ranking): recall vs exact, persistence, tuning,
integrity checks, and real photos through the CLI."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from id2_plugin.errors import ConfigError, StoreDamagedError
from id2_plugin.stores.faiss_store import FaissStore
from id2_plugin.stores.tuning import perturbed_queries, tune_search
from id2_plugin.types import ReferenceRecord

DIM = 64
EMB = "test-embedder@0123/256/squash"
FS = {"nlist": 64, "m": 16, "merge_min": 0}


def anisotropic(n: int, seed: int = 0) -> np.ndarray:
    """Unit vectors with a decaying spectrum (learned embeddings are far from isotropic)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, DIM)).astype(np.float32) / np.sqrt(1 + np.arange(DIM, dtype=np.float32)) ** 0.5
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def records(a: int, b: int) -> list[ReferenceRecord]:
    return [ReferenceRecord(sha256=hashlib.sha256(str(i).encode()).hexdigest(), uri=f"ref/{i}") for i in range(a, b)]


def build(path: Path, kind: str, opts: dict, x: np.ndarray, batch: int = 5000) -> FaissStore:
    store = FaissStore(path, EMB, DIM, index=kind, index_options=opts, create=True)
    for s in range(0, len(x), batch):
        store.add(x[s : s + batch], records(s, s + len(x[s : s + batch])))
    store.compact()
    return store


def top1(store: FaissStore, q: np.ndarray) -> np.ndarray:
    return np.array([int(r[0].reference_id) for r in store.query(q, k=10)])


def test_fast_scan_tunes_to_exact_recall_and_round_trips(tmp_path: Path) -> None:
    x = anisotropic(20_000)
    q = perturbed_queries(x[::67], 0.8, np.random.default_rng(1))  # 299 edited-copy-like queries
    exact = top1(build(tmp_path / "flat", "flat_fp16", {}, x), q)
    store = build(tmp_path / "fs", "ivf_pq_fs", {**FS, "nprobe": 1}, x)
    info = store.info()
    assert info.extra["trained"] and (info.extra["nlist"], info.extra["m"], info.extra["nbits"]) == (64, 16, 4)
    assert info.extra["search"] == "approximate ivf_pq_fs over 20000 + exact buffer of 0"
    low = np.mean(top1(store, q) == exact)
    tuned = tune_search(store, None, 0.99, n_queries=300, seed=2)
    assert tuned.parameter == "nprobe" and tuned.reached and tuned.saved and tuned.value > 1
    # then the re-ranking depth: the smallest tried that keeps the target, else the configured 2
    depths = [p["value"] for p in tuned.extra["rerank_curve"]]
    assert depths == [1] and tuned.extra["rerank"] == (
        1 if tuned.extra["rerank_curve"][0]["recall_at_1"] >= 0.99 else 2
    )
    assert store.info().extra["search_params"] == {"nprobe": tuned.value, "rerank": tuned.extra["rerank"]}
    # The saved nprobe applies to a new handle, which reloads the snapshot from disk.
    store.close()
    reopened = FaissStore(tmp_path / "fs")
    res = reopened.query(q, k=10)
    found = np.array([int(r[0].reference_id) for r in res])
    assert np.mean(found == exact) >= 0.98 > low
    # re-ranked scores are true cosines of the float16 rows, not 4-bit PQ approximations
    for i in (0, 5, 50):
        m = res[i][0]
        assert abs(m.score - float(q[i] @ x[int(m.reference_id)])) < 2e-3
    assert reopened.verify() == []
    assert [r[0].reference_id for r in FaissStore(tmp_path / "fs").query(q[:20], k=3)] == [str(i) for i in found[:20]]


def test_fast_scan_removes_and_refuses_scores_without_reranking(tmp_path: Path) -> None:
    x = anisotropic(3000, seed=3)
    store = build(tmp_path / "s", "ivf_pq_fs", {"nlist": 8, "merge_min": 0}, x, batch=1000)
    assert store.query(x[[10]], k=1)[0][0].reference_id == "10"
    assert store.remove(["10"]) == 1
    assert all(m.reference_id != "10" for m in store.query(x[[10]], k=5)[0])
    with pytest.raises(ConfigError, match="rerank"):
        FaissStore(tmp_path / "t", EMB, DIM, index="ivf_pq_fs", index_options={"rerank": 0}, create=True)
    with pytest.raises(ConfigError, match="nbits"):  # fast-scan codes are 4-bit by construction
        FaissStore(tmp_path / "u", EMB, DIM, index="ivf_pq_fs", index_options={"nbits": 8}, create=True)


def test_truncated_fast_scan_snapshot_is_damage_and_is_rebuilt(tmp_path: Path) -> None:
    x = anisotropic(1000, seed=4)
    build(tmp_path / "s", "ivf_pq_fs", {"nlist": 4, "train_min": 700, "merge_min": 0}, x, batch=500).close()
    snap = next((tmp_path / "s").glob("main.*.faiss"))
    os.truncate(snap, snap.stat().st_size - 64)
    store = FaissStore(tmp_path / "s", EMB, DIM)
    assert store.verify() and "truncated" in store.verify()[0]
    with pytest.raises(StoreDamagedError):
        store.add(anisotropic(1001, seed=4)[1000:], records(1000, 1001))
    assert store.repair() == ["rebuilt the ivf_pq_fs index from the 1000 stored vectors"]
    assert store.verify() == [] and store.query(x[[7]], k=1)[0][0].reference_id == "7"


def test_real_photos_through_the_cli_find_what_exact_search_finds(
    photo_paths: list[Path], real_edits_dir: Path, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from id2_plugin.cli import cli, load_commands

    load_commands()
    pairs = [json.loads(line) for line in (real_edits_dir / "pairs.jsonl").read_text().splitlines()[:8]]
    origins = sorted({real_edits_dir / p["origin"] for p in pairs})
    refs = [*origins, *photo_paths[:12]]
    edits = [str(real_edits_dir / p["query"]) for p in pairs]
    cfg = tmp_path / "id2.yaml"
    cfg.write_text(
        f"embedder: {{name: sscd}}\nstore:\n  path: {tmp_path / 'store'}\n  index: ivf_pq_fs\n"
        "  index_options: {nlist: 2, train_min: 16, merge_min: 0}\n"
    )
    runner = CliRunner()
    added = runner.invoke(cli, ["--config", str(cfg), "index", "add", *map(str, refs)])
    assert added.exit_code == 0, added.output
    assert runner.invoke(cli, ["--config", str(cfg), "index", "verify"]).exit_code == 0
    emb = runner.invoke(cli, ["--config", str(cfg), "embed", *edits, "--out", str(tmp_path / "q.npz")])
    assert emb.exit_code == 0, emb.output
    q = np.load(tmp_path / "q.npz")["embeddings"]
    store = FaissStore(tmp_path / "store")
    assert store.info().extra["search"].startswith("approximate ivf_pq_fs")
    ids = [str(i) for i in range(store.info().count)]
    exact = np.argmax(q @ store.fetch_vectors(ids).T, axis=1)
    found = [r[0] for r in store.query(q, k=5)]
    assert [int(m.reference_id) for m in found] == exact.tolist()
    by_uri = {Path(m.uri).name for m in found}
    assert len(by_uri & {o.name for o in origins}) >= len(origins) // 2  # the edits do find their originals
    tuned = runner.invoke(cli, ["--config", str(cfg), "index", "tune", "--queries", str(len(refs))])
    assert tuned.exit_code == 0 and "chosen nprobe=" in tuned.output and "chosen rerank=" in tuned.output, tuned.output
