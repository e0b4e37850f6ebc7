"""Scale benchmark of the reference stores: build time, memory, latency and recall per index type.

    python benchmarks/scale.py --n 1000000 --queries 1000 --dim 512
    python benchmarks/scale.py --quick                      # 100k references
    python benchmarks/scale.py --n 200000 --photos 0        # synthetic only (no model needed)
    python benchmarks/scale.py --backend qdrant --n 20000   # Qdrant, qdrant-client's local mode (exact)
    python benchmarks/scale.py --backend qdrant --qdrant-url http://qdrant:6333 --n 10000000 --types hnsw_int8

References: real embeddings of ``--photos`` photos (TAEF2 encoder, latents kept in memory only, then the shipped
W if there is one, else a seeded random projection to ``--dim``) plus synthetic vectors with the same
statistics: a Gaussian with the real mean and a low-rank (``--rank``) fit of the real covariance plus an
isotropic residual, L2-normalised. Synthetic vectors are generated chunk by chunk from per-chunk seeds, so
memory stays bounded and the ground truth can regenerate them.

Queries are references perturbed to cosine ``--query-similarity`` (like an edited copy of an original);
ground truth is exact float32 search over all references (numpy, streamed).

Per index type the store is bulk-loaded through ``FaissStore.add`` (or ``QdrantStore.add``) in ``--batch``
chunks (what ``id2-plugin index add`` does) and compacted; IVF / HNSW are then tuned (``tune_search``;
Qdrant's HNSW over ``hnsw_ef``; target recall@1 ``--target-recall``) and measured at the tuned setting.
Reported: build time, disk size, RSS of a fresh process after loading the store, load time, recall@1 /
recall@10 vs exact, end-to-end ``store.query`` latency p50/p99 at batch 1 and batch 64 (k=10, includes the
metadata lookup). The flat index's effective memory bandwidth (bytes scanned / raw FAISS search time) is
compared with measured memcpy and numpy GEMV bandwidth. Output: a markdown table on stdout and in ``--md``,
all numbers in ``--json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _scale_backends import BACKENDS, result_ids  # noqa: E402
from _scale_data import References, Synth, exact_topk, real_embeddings  # noqa: E402
from _scale_measure import bandwidth, load_in_fresh_process, percentiles, proc_status_mb, reset_peak_rss  # noqa: E402

from id2_plugin.stores.tuning import perturbed_queries
from id2_plugin.types import ReferenceRecord

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("ID2_SHARED_DIR", ROOT.parent / "shared"))


# -- one index type: build, size, tune, measure -----------------------------------------------------------------
def build(backend: Any, kind: str, opts: dict[str, Any], refs: References, dim: int) -> tuple[Any, float, bool]:
    """The store of ``kind`` bulk-loaded in ``--batch`` chunks (or reused): (store, build seconds, peak RSS valid)."""
    args = backend.args
    peak_ok = reset_peak_rss()
    t0 = time.perf_counter()
    if args.reuse and backend.built(kind):
        store = backend.open(kind, {})
        if (count := store.info().count) != refs.n:
            raise SystemExit(f"--reuse: {backend.location(kind)} holds {count:,} references, not {refs.n:,}")
        print(
            f"  {kind}: reusing the built store at {backend.location(kind)} (build figures not measured)",
            file=sys.stderr,
        )
        return store, float("nan"), False
    store = backend.create(kind, opts, dim)
    for start, x in refs.chunks():
        for s in range(0, len(x), args.batch):
            part = x[s : s + args.batch]
            store.add(
                part,
                [ReferenceRecord(sha256=f"{start + s + i:064x}", uri=f"ref:{start + s + i}") for i in range(len(part))],
            )
        print(f"  {kind}: {start + len(x):,} added ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    if hasattr(store, "compact"):
        store.compact()
    return store, time.perf_counter() - t0, peak_ok


def measure(store: Any, q: np.ndarray, gt_i: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    """Recall against exact search, batch-1 / batch-64 latency and the big-batch throughput passes."""
    store.query(q[:1], k=10)  # load
    ids = result_ids(store.query(q, k=10), 10)
    row: dict[str, Any] = {
        "recall_at_1": float(np.mean(ids[:, 0] == gt_i[:, 0])),
        "recall_at_10": float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, gt_i)])),
    }
    lat1, lat64 = [], []
    for i in range(min(len(q), args.latency_queries)):
        t = time.perf_counter()
        store.query(q[i : i + 1], k=10)
        lat1.append((time.perf_counter() - t) * 1e3)
    for s in range(0, len(q) - 63, 64):
        t = time.perf_counter()
        store.query(q[s : s + 64], k=10)
        lat64.append((time.perf_counter() - t) * 1e3)
    row["b1_p50_ms"], row["b1_p99_ms"] = percentiles(lat1)
    row["b64_p50_ms"], row["b64_p99_ms"] = percentiles(lat64) if lat64 else (float("nan"), float("nan"))
    row["b64_qps"] = 64 / (row["b64_p50_ms"] / 1e3) if lat64 else float("nan")
    passes: dict[float | None, list[float]] = {None: [], args.threshold: []}
    for _ in range(args.repeats):  # every query once per pass, both ways interleaved; the median pass is reported
        for thr, out in passes.items():
            t = time.perf_counter()
            for s in range(0, len(q), args.big_batch):
                store.query(q[s : s + args.big_batch], k=10, threshold=thr)
            out.append(len(q) / (time.perf_counter() - t))
    row["big_batch_qps"], row["big_batch_qps_passes"] = float(np.median(passes[None])), passes[None]
    row["big_batch_thr_qps"] = float(np.median(passes[args.threshold]))
    row["big_batch_thr_qps_passes"] = passes[args.threshold]
    return row


def bench_type(
    backend: Any, kind: str, opts: dict[str, Any], refs: References, q: np.ndarray, gt_i: np.ndarray, workdir: Path
) -> dict[str, Any]:
    args = backend.args
    base_rss = proc_status_mb("VmRSS").get("VmRSS", float("nan"))
    store, build_s, peak_ok = build(backend, kind, opts, refs, q.shape[1])
    mem = proc_status_mb("VmHWM", "RssAnon", "RssFile")
    row: dict[str, Any] = {
        "index": kind,
        "backend": backend.name,
        "options": opts,
        "build_s": build_s,
        **backend.sizes(store, kind),
        "bench_rss_before_build_mb": base_rss,
        "build_peak_rss_mb": mem.get("VmHWM", float("nan")) if peak_ok else float("nan"),
        "after_build_anon_mb": mem.get("RssAnon"),
        "after_build_file_mb": mem.get("RssFile"),
    }
    t = time.perf_counter()
    row.update(backend.tune(store, kind, refs), tune_s=time.perf_counter() - t)
    store.close()  # local-mode Qdrant locks its folder: the fresh process must be able to open it
    np.save(workdir / "q.npy", q)
    row.update(
        load_in_fresh_process({**backend.fresh_spec(kind), "queries": str(workdir / "q.npy"), "threads": args.threads})
    )
    gc.collect()
    with backend.open(kind, row.get("search_options", {})) as store:
        row.update(measure(store, q, gt_i, args))
        row.update(backend.raw_scan(store, kind, q))
    row["load_avg_1m"] = os.getloadavg()[0]
    if not args.keep:
        backend.remove(kind)
    return row


# -- report ---------------------------------------------------------------------------------------------------
def label(row: dict[str, Any]) -> str:
    backend = row.get("backend", "faiss")
    return row["index"] if backend == "faiss" else f"{backend} {row['index']}"


def markdown(result: dict[str, Any]) -> str:
    cfg = result["config"]
    lines = [
        f"# Reference-store scale benchmark: {cfg.get('backend', 'faiss').replace(',', ' and ')} backend "
        f"({cfg['n']:,} references, "
        f"dim {cfg['dim']}, {cfg['queries']} queries)",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']}  ",
        f"References: {result['real']}; synthetic rest: Gaussian fit (mean + rank-{cfg['rank']} covariance + "
        f"isotropic residual), L2-normalised.  ",
        f"Queries: references perturbed to cosine {cfg['query_similarity']}; ground truth = exact float32 search.  ",
        f"Bulk load through `{cfg.get('store_class', 'FaissStore')}.add` in batches of {cfg['batch']:,} (then "
        f"`compact()` for FAISS); approximate indexes tuned (target recall@1 {cfg['target_recall']}, "
        f"{cfg['tune_queries']} queries) and measured at the tuned setting. Latency = end-to-end "
        "`store.query(k=10)` incl. metadata lookup.",
        "",
        "| index | setting | build s | build peak RSS MB | raw MB | index MB | disk MB | RSS MB (fresh load) | load s "
        f"| recall@1 | recall@10 | b1 p50 ms | b1 p99 ms | b64 p50 ms | b64 p99 ms | b64 q/s | b{cfg['big_batch']} q/s "
        f"| b{cfg['big_batch']} q/s at threshold {cfg.get('threshold', 0.5)} | load avg |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {label(r)} | {r['param']} | {r['build_s']:.1f} | {r.get('build_peak_rss_mb', float('nan')):.0f} | "
            f"{r['raw_mb']:.0f} | {r['index_mb']:.0f} | {r.get('disk_mb', float('nan')):.0f} | {r['rss_mb']:.0f} | "
            f"{r['load_s']:.2f} | {r['recall_at_1']:.4f} | {r['recall_at_10']:.4f} | {r['b1_p50_ms']:.2f} | "
            f"{r['b1_p99_ms']:.2f} | {r['b64_p50_ms']:.1f} | {r['b64_p99_ms']:.1f} | {r['b64_qps']:.0f} | "
            f"{r.get('big_batch_qps', float('nan')):.0f} | {r.get('big_batch_thr_qps', float('nan')):.0f} | "
            f"{r.get('load_avg_1m', float('nan')):.1f} |"
        )
    sql = max([r["sqlite_mb"] for r in result["rows"] if r.get("backend", "faiss") == "faiss"], default=0.0)
    lines += [
        "",
        f"raw = kept vectors (float32 for flat, float16 otherwise; flat indexes are built from them at load); "
        f"index = the persisted FAISS snapshot (IVF / HNSW); the SQLite metadata adds ~{sql:.0f} MB. "
        "recall@10 counts ranks 2-10, which for edited-copy queries are unrelated references at near-equal "
        "low similarity; recall@1 is what origin identification depends on.",
    ]
    if any(r.get("backend") == "qdrant" for r in result["rows"]):
        lines += [
            "",
            "qdrant rows: raw = float32 vectors held by Qdrant; in qdrant-client's local mode they live in the "
            "benchmark process (loaded whole from its folder, disk = that folder) and every search is exact, "
            "whatever the index type; against a server, RSS and disk are the server's and not measured here.",
        ]
    lines += [
        "",
        "build peak RSS = VmHWM of the benchmark process during the bulk load (it also holds the queries and "
        "ground truth); RSS (fresh load) = growth of a new process opening the store and answering one query. "
        "Per type, after all queries in that fresh process: "
        + "; ".join(
            f"{label(r)} anon {r.get('process_anon_mb', float('nan')):.0f} MB + file-backed "
            f"{r.get('process_file_mb', float('nan')):.0f} MB"
            for r in result["rows"]
        )
        + " (file-backed = mapped raw rows read by re-ranking: page cache, reclaimable). load avg = 1-minute "
        "load average after the type's measurements (2 cores).",
    ]
    lines += [
        "",
        f"b{cfg['big_batch']} q/s = median of {cfg.get('repeats', 1)} passes over all queries (k=10), without "
        f"and with the threshold, interleaved; every pass: "
        + "; ".join(
            f"{label(r)} "
            + ", ".join(f"{x:.0f}" for x in r.get("big_batch_qps_passes", []))
            + " / at the threshold "
            + ", ".join(f"{x:.0f}" for x in r.get("big_batch_thr_qps_passes", []))
            for r in result["rows"]
        ),
    ]
    bw = result["bandwidth"]
    lines += [
        "",
        f"Memory bandwidth on a {bw['buffer_mb']:.0f} MB buffer: memcpy {bw['memcpy_gb_s']:.2f} GB/s "
        f"(bytes copied/s), numpy GEMV {bw['gemv_gb_s']:.2f} GB/s (matrix bytes read/s).",
        "",
    ]
    for r in result["rows"]:
        if "scan_gb_s" in r:
            lines.append(
                f"- {label(r)}: raw FAISS batch-1 scan p50 {r['faiss_b1_p50_ms']:.2f} ms over "
                f"{r['count']:,} x {cfg['dim']} = {r['scan_gb_s']:.2f} GB/s effective "
                f"({r['scan_gb_s'] / bw['gemv_gb_s']:.0%} of GEMV, {r['scan_gb_s'] / bw['memcpy_gb_s']:.0%} of memcpy)"
            )
    tuned = [r for r in result["rows"] if "tune_curve" in r]
    if tuned:
        lines += ["", "Tuning curves (value: recall@1 on the tuning queries):", ""]
        for r in tuned:
            curve = ", ".join(f"{p['value']}: {p['recall_at_1']:.3f}" for p in r["tune_curve"])
            extra = ", ".join(f"{k}={r[k]}" for k in ("nlist", "m", "nbits", "trained_on") if k in r)
            lines.append(f"- {label(r)} ({extra}{', ' if extra else ''}tuned in {r['tune_s']:.1f} s): {curve}")
    lines += [
        "",
        f"Total wall time {result['total_s']:.0f} s. Note: the machine's 2 cores are shared with other "
        "jobs; absolute timings are indicative, ratios between index types are more stable.",
    ]
    return "\n".join(lines) + "\n"


def qdrant_version(args: argparse.Namespace) -> str:
    if "qdrant" not in args.backend.split(","):
        return ""
    from importlib.metadata import version

    where = f"server {args.qdrant_url}" if args.qdrant_url else "local mode"
    return f"qdrant-client {version('qdrant-client')} ({where}), "


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="number of references")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=512, help="vector dimension (overridden by a shipped W's)")
    ap.add_argument("--quick", action="store_true", help="100k references (unless --n is given explicitly)")
    ap.add_argument("--photos", type=int, default=200, help="real photos embedded for the statistics (0: none)")
    ap.add_argument("--rank", type=int, default=64, help="rank of the covariance fit")
    ap.add_argument(
        "--backend",
        default="faiss",
        help="store backend(s) measured on the same references and queries: faiss, qdrant or faiss,qdrant",
    )
    ap.add_argument(
        "--qdrant-url",
        default=None,
        help="Qdrant server for the qdrant backend (default: qdrant-client's local mode in --workdir)",
    )
    ap.add_argument(
        "--types",
        default=None,
        help="comma-separated index types, each run on every chosen backend that has it (default: all "
        "of the FAISS backend's; qdrant: flat, plus hnsw,hnsw_int8 with --qdrant-url)",
    )
    ap.add_argument("--batch", type=int, default=20_000, help="vectors per store.add (commit) during the bulk load")
    ap.add_argument("--target-recall", type=float, default=0.99)
    ap.add_argument("--tune-queries", type=int, default=300)
    ap.add_argument("--query-similarity", type=float, default=0.8)
    ap.add_argument("--latency-queries", type=int, default=200, help="batch-1 queries timed")
    ap.add_argument("--hnsw-M", type=int, default=32)
    ap.add_argument("--hnsw-ef-construction", type=int, default=80)
    ap.add_argument("--nlist", type=int, default=0, help="IVF lists of the IVF types (0: the store's auto)")
    ap.add_argument("--max-train-per-list", type=int, default=64, help="IVF training sample per list")
    ap.add_argument("--big-batch", type=int, default=500, help="batch size of the all-queries throughput run")
    ap.add_argument("--repeats", type=int, default=3, help="passes of the big-batch throughput run (median reported)")
    ap.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="score threshold of the second big-batch run (identify's default; candidates below it are "
        "dropped before their metadata is read)",
    )
    ap.add_argument("--threads", type=int, default=0, help="FAISS OpenMP threads (0: FAISS default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None, help="where stores are built (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the built stores")
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="measure stores kept in --workdir by an earlier --keep run of the same --n and --seed "
        "instead of building them (build time and peak RSS are then not reported)",
    )
    ap.add_argument("--json", dest="json_out", default=str(ROOT / "benchmarks" / "results" / "scale.json"))
    ap.add_argument("--md", dest="md_out", default=str(ROOT / "benchmarks" / "results" / "scale.md"))
    args = ap.parse_args()
    if args.quick and "--n" not in sys.argv:
        args.n = 100_000
    unknown = set(args.backend.split(",")) - set(BACKENDS)
    if unknown:
        ap.error(f"--backend: unknown {sorted(unknown)}; choose from {', '.join(BACKENDS)}")
    return args


def plan(backends: list[Any], types: str | None) -> list[tuple[Any, str]]:
    """(backend, index type) pairs to measure, in order; a type no chosen backend has is an error."""
    if types is None:
        return [(b, k) for b in backends for k in b.default_types()]
    kinds = [k.strip() for k in types.split(",") if k.strip()]
    for kind in kinds:
        if not any(kind in b.types for b in backends):
            names = ", ".join(b.name for b in backends)
            raise SystemExit(
                f"--types: {kind!r} is not an index type of {names} ({'; '.join(', '.join(b.types) for b in backends)})"
            )
    return [(b, k) for b in backends for k in kinds if k in b.types]


def main() -> None:
    args = parse_args()
    import faiss

    if args.threads > 0:
        faiss.omp_set_num_threads(args.threads)
    t_start = time.perf_counter()
    real, real_note = real_embeddings(args.photos, args.dim, args.seed)
    dim = real.shape[1] if real is not None else args.dim
    print(f"real embeddings: {real_note}", file=sys.stderr)
    refs = References(real, Synth.fit(real, dim, args.rank, args.seed), args.n, chunk=100_000)
    rng = np.random.default_rng(args.seed)
    src = np.sort(rng.choice(args.n, size=args.queries, replace=False))
    q = perturbed_queries(refs.rows(src), args.query_similarity, rng)
    t = time.perf_counter()
    _, gt_i = exact_topk(refs, q, 10)
    print(f"ground truth: {time.perf_counter() - t:.0f} s", file=sys.stderr)
    bw = bandwidth(min(args.n * dim * 4, 1 << 30))
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="id2-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    backends = [BACKENDS[name](args, workdir) for name in args.backend.split(",")]
    rows = []
    try:
        for backend, kind in plan(backends, args.types):
            print(f"{backend.name} {kind} ...", file=sys.stderr, flush=True)
            rows.append(bench_type(backend, kind, backend.options(kind), refs, q, gt_i, workdir))
            print(json.dumps(rows[-1], default=str), file=sys.stderr, flush=True)
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    result = {
        "command": "python benchmarks/scale.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"faiss {faiss.__version__} ({faiss.omp_get_max_threads()} OpenMP threads), "
        f"{qdrant_version(args)}load average {os.getloadavg()[0]:.1f} at the end",
        "config": {
            **{k: v for k, v in vars(args).items() if k not in ("json_out", "md_out")},
            "dim": dim,
            "store_class": " / ".join(b.store_class for b in backends),
        },
        "real": f"{0 if real is None else len(real)} real embeddings ({real_note})",
        "bandwidth": bw,
        "rows": rows,
        "total_s": time.perf_counter() - t_start,
    }
    md = markdown(result)
    print(md)
    for out, text in ((args.json_out, json.dumps(result, indent=2, default=str)), (args.md_out, md)):
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)


if __name__ == "__main__":
    main()
