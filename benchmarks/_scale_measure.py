"""The scale benchmark's process and machine measurements: memory bandwidth, RSS, a store loaded in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


# -- measurements ---------------------------------------------------------------------------------------------
def bandwidth(n_bytes: int) -> dict[str, float]:
    """memcpy (bytes copied / s) and numpy GEMV (matrix bytes read / s) on a buffer of ``n_bytes``."""
    d = 512
    rows = max(n_bytes // (4 * d), 1)
    a = np.random.default_rng(0).standard_normal((rows, d), dtype=np.float32)
    b = np.empty_like(a)
    np.copyto(b, a)  # first touch
    v = a[0].copy()
    a @ v
    copy_t, gemv_t = [], []
    for _ in range(5):
        t = time.perf_counter()
        np.copyto(b, a)
        copy_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        a @ v
        gemv_t.append(time.perf_counter() - t)
    return {
        "buffer_mb": a.nbytes / 1e6,
        "memcpy_gb_s": a.nbytes / min(copy_t) / 1e9,
        "gemv_gb_s": a.nbytes / min(gemv_t) / 1e9,
    }


def proc_status_mb(*keys: str) -> dict[str, float]:
    """Fields of /proc/self/status in MB (VmRSS, VmHWM, RssAnon, RssFile; Linux only, else empty)."""
    out: dict[str, float] = {}
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        name, _, value = line.partition(":")
        if name in keys:
            out[name] = int(value.split()[0]) / 1024
    return out


def reset_peak_rss() -> bool:
    """Reset VmHWM so the next read is the peak of what follows (Linux >= 4.0; False if not possible)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


_LOAD_SCRIPT = """
import json, resource, sys, time
import numpy as np
def status():
    out = {}
    for line in open("/proc/self/status"):
        k, _, v = line.partition(":")
        if k in ("VmRSS", "RssAnon", "RssFile"):
            out[k] = int(v.split()[0]) / 1024
    return out
spec = json.loads(sys.argv[1])
import faiss
faiss.omp_set_num_threads(spec["threads"]) if spec["threads"] > 0 else None
before = status()
t = time.perf_counter()
if spec["backend"] == "qdrant":
    from id2_plugin.stores.qdrant_store import QdrantStore
    s = QdrantStore(spec["location"], collection=spec["collection"])
else:
    from id2_plugin.stores.faiss_store import FaissStore
    s = FaissStore(spec["location"])
q = np.load(spec["queries"])
s.query(q[:1], k=10)
load_s = time.perf_counter() - t
after = status()
s.query(q, k=10)  # every query once: the re-ranking rows it touches count as file-backed RSS
end = status()
s.close()
print(json.dumps({"load_s": load_s, "rss_mb": after["VmRSS"] - before["VmRSS"],
                  "anon_mb": after["RssAnon"] - before["RssAnon"], "process_rss_mb": end["VmRSS"],
                  "process_anon_mb": end["RssAnon"], "process_file_mb": end["RssFile"],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before["VmRSS"]}))
"""


def load_in_fresh_process(spec: dict[str, Any]) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", _LOAD_SCRIPT, json.dumps(spec)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def percentiles(ms: list[float]) -> tuple[float, float]:
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
