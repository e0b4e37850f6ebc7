"""benchmarks/scale.py measures both store backends with the same shape: a tiny synthetic run per backend.

Qdrant runs in qdrant-client's local mode (no server here). Only shapes and exact-search recall are asserted:
timings belong in the benchmark's output, not in pass/fail tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("qdrant_client")

ROOT = Path(__file__).resolve().parents[2]
SCALE = ROOT / "benchmarks" / "scale.py"
MEASURED = {
    "recall_at_1",
    "recall_at_10",
    "b1_p50_ms",
    "b1_p99_ms",
    "b64_p50_ms",
    "b64_qps",
    "big_batch_qps",
    "big_batch_thr_qps",
    "big_batch_thr_qps_passes",
    "big_batch_qps_passes",
    "load_s",
    "rss_mb",
    "build_s",
    "count",
    "disk_mb",
    "raw_mb",
    "param",
}


def run_scale(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        str(SCALE),
        "--n",
        "3000",
        "--queries",
        "80",
        "--photos",
        "0",
        "--dim",
        "32",
        "--latency-queries",
        "10",
        "--repeats",
        "2",
        "--big-batch",
        "40",
        "--workdir",
        str(tmp_path / "work"),
        "--json",
        str(out / "scale.json"),
        "--md",
        str(out / "scale.md"),
        *extra,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)


def test_qdrant_local_mode_is_measured_beside_faiss_with_the_same_shape(tmp_path: Path) -> None:
    run = run_scale(tmp_path, "--backend", "faiss,qdrant", "--types", "flat")
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads((tmp_path / "out" / "scale.json").read_text())
    f_row, q_row = result["rows"]
    assert (f_row["backend"], q_row["backend"]) == ("faiss", "qdrant")
    assert MEASURED <= set(f_row) and MEASURED <= set(q_row)
    assert q_row["index"] == "flat" and q_row["count"] == f_row["count"] == 3000
    # Local mode is exact search, like FAISS flat: on the same queries both find the exact top-1 every time.
    assert q_row["recall_at_1"] == f_row["recall_at_1"] == 1.0
    assert q_row["recall_at_10"] >= 0.99
    assert len(q_row["big_batch_qps_passes"]) == 2 and q_row["big_batch_qps"] > 0
    md = (tmp_path / "out" / "scale.md").read_text()
    assert "faiss and qdrant backend (3,000 references" in md and "QdrantStore.add" in md
    assert "| qdrant flat | exact |" in md and "qdrant-client" in md and "local mode" in md
    # Without --keep the stores are removed: no vectors left behind in the work folder.
    assert not (tmp_path / "work" / "qdrant_flat").exists() and not (tmp_path / "work" / "flat").exists()


def test_qdrant_hnsw_needs_a_server(tmp_path: Path) -> None:
    run = run_scale(tmp_path, "--backend", "qdrant", "--types", "hnsw")
    assert run.returncode != 0
    assert "needs --qdrant-url" in run.stderr


def test_an_index_type_of_no_chosen_backend_is_refused(tmp_path: Path) -> None:
    run = run_scale(tmp_path, "--backend", "qdrant", "--types", "ivf_pq_fs")
    assert run.returncode != 0
    assert "'ivf_pq_fs' is not an index type of qdrant" in run.stderr


def test_the_qdrant_hnsw_ef_sweep_runs_and_stops_at_the_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server path's tuning code, run in local mode (exact search, so the first hnsw_ef reaches 1.0)."""
    import argparse
    import importlib

    monkeypatch.syspath_prepend(str(SCALE.parent))
    backends = importlib.import_module("_scale_backends")
    data = importlib.import_module("_scale_data")
    from id2_plugin.stores.qdrant_store import QdrantStore
    from id2_plugin.types import ReferenceRecord

    args = argparse.Namespace(
        qdrant_url=None,
        tune_queries=40,
        query_similarity=0.8,
        target_recall=0.99,
        seed=0,
        hnsw_M=16,
        hnsw_ef_construction=64,
    )
    refs = data.References(None, data.Synth.fit(None, 32, 8, 0), 1500, chunk=500)
    backend = backends.QdrantBackend(args, tmp_path)
    store = QdrantStore(
        backend.location("hnsw"),
        backends.IDENTITY,
        32,
        index="hnsw",
        create=True,
        index_options=backend.options("hnsw"),
        collection=backend.collection("hnsw"),
    )
    for start, x in refs.chunks():
        store.add(x, [ReferenceRecord(sha256=f"{start + i:064x}", uri=f"ref:{start + i}") for i in range(len(x))])
    store.close()
    tuned = backend.tune(None, "hnsw", refs)
    assert tuned["param"] == "hnsw_ef=16" and tuned["search_options"] == {"hnsw_ef": 16}
    assert tuned["tune_reached"] and [p["value"] for p in tuned["tune_curve"]] == [16]
