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
MEASURED = {"recall_at_1", "recall_at_10", "b1_p50_ms", "b1_p99_ms", "b64_p50_ms", "b64_qps", "big_batch_qps",
            "big_batch_thr_qps", "big_batch_thr_qps_passes",
            "big_batch_qps_passes", "load_s", "rss_mb", "build_s", "count", "disk_mb", "raw_mb", "param"}


def run_scale(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    out = tmp_path / "out"
    cmd = [sys.executable, str(SCALE), "--n", "3000", "--queries", "80", "--photos", "0", "--dim", "32",
           "--latency-queries", "10", "--repeats", "2", "--big-batch", "40", "--workdir", str(tmp_path / "work"),
           "--json", str(out / "scale.json"), "--md", str(out / "scale.md"), *extra]
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
