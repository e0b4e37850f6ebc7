#!/usr/bin/env python
"""FAISS store search latency by thread setting, with and without a competing process burning a core.

    python benchmarks/search_threads.py [--n 50000] [--dim 1280] [--queries 200] \
        [--out benchmarks/results/search_threads.md]

A ``flat`` store of ``--n`` random unit vectors (fused dimension 1280 by default) is built in a temporary
folder (removed after). Two measurements, each once with the machine as it is ("as is") and once while a
child process spins on one core ("+1 burner"):

* single queries through ``store.query`` (SQLite lookup included): p50 / p99 latency with
  ``query_threads: 1`` (the default) against ``0`` (all cores), the two handles alternating query by query;
* batches of 256 queries: the numpy BLAS path (``blas_min_batch: 20``, the default) against FAISS's own flat
  search (``blas_min_batch`` above the batch), alternating round by round; median of the rounds.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _output import emit  # noqa: E402


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def build(path: Path, n: int, dim: int) -> None:
    from id2_plugin.stores.faiss_store import FaissStore
    from id2_plugin.types import ReferenceRecord

    rng = np.random.default_rng(0)
    with FaissStore(path, embedder_identity="bench", dim=dim, create=True) as store:
        for s in range(0, n, 10_000):
            m = min(10_000, n - s)
            store.add(
                unit_rows(rng, m, dim), [ReferenceRecord(sha256=f"{s + i:064x}", uri=f"r{s + i}") for i in range(m)]
            )


@contextmanager
def burner(on: bool):
    """A child process spinning on one core while the block runs (killed by its own handle after)."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if on else None
    try:
        time.sleep(0.5 if on else 0)
        yield
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()


def single_latencies(stores: dict, queries: np.ndarray) -> dict[str, dict[str, float]]:
    times: dict[str, list[float]] = {k: [] for k in stores}
    for q in queries:
        for name, store in stores.items():
            t = time.perf_counter()
            store.query(q[None], k=5)
            times[name].append((time.perf_counter() - t) * 1e3)
    return {k: {"p50": float(np.percentile(v, 50)), "p99": float(np.percentile(v, 99))} for k, v in times.items()}


def batch_times(stores: dict, queries: np.ndarray, rounds: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in stores}
    for _ in range(rounds):
        for name, store in stores.items():
            t = time.perf_counter()
            store.query(queries, k=5)
            times[name].append((time.perf_counter() - t) * 1e3)
    return {k: float(np.median(v)) for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    from id2_plugin.stores.faiss_store import FaissStore

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    argv = argv if argv is not None else sys.argv[1:]
    rng = np.random.default_rng(1)
    rows = []
    with tempfile.TemporaryDirectory(prefix="id2-search-bench-") as tmp:
        build(Path(tmp), args.n, args.dim)
        open_ = lambda **o: FaissStore(tmp, embedder_identity="bench", index_options=o)  # noqa: E731
        single = {"query_threads 1": open_(query_threads=1), "query_threads 0 (all)": open_(query_threads=0)}
        batch = {"numpy BLAS": open_(blas_min_batch=20), "faiss flat": open_(blas_min_batch=args.batch + 1)}
        for s in (*single.values(), *batch.values()):
            s.query(unit_rows(rng, 2, args.dim), k=5)  # load the vectors once
        for load in (False, True):
            with burner(load):
                lat = single_latencies(single, unit_rows(rng, args.queries, args.dim))
                bt = batch_times(batch, unit_rows(rng, args.batch, args.dim), args.rounds)
            cond = "+1 burner" if load else "as is"
            rows += [f"| single query | {k} | {cond} | {v['p50']:.2f} | {v['p99']:.2f} | |" for k, v in lat.items()]
            rows += [
                f"| batch of {args.batch} | {k} | {cond} | {v:.1f} (median) | | {args.batch / v * 1e3:.0f} |"
                for k, v in bt.items()
            ]
        for s in (*single.values(), *batch.values()):
            s.close()
    lines = [
        f"# Flat store search: {args.n} x {args.dim} float32, k=5 "
        f"({platform.machine()}, {os.cpu_count()} cores, shared machine)",
        "",
        "| search | setting | load | p50 ms | p99 ms | queries/s |",
        "|---|---|---|---:|---:|---:|",
        *rows,
        "",
        f"`python benchmarks/search_threads.py {' '.join(argv)}`",
    ]
    emit(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
