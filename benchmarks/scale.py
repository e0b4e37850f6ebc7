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
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from id2_plugin.stores.faiss_store import FaissStore
from id2_plugin.stores.qdrant_store import QdrantStore
from id2_plugin.stores.tuning import perturbed_queries, sweep, tune_search
from id2_plugin.types import ReferenceRecord

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("ID2_SHARED_DIR", ROOT.parent / "shared"))
ALL_TYPES = ("flat", "flat_fp16", "ivf_flat", "ivf_pq", "ivf_pq_fs", "hnsw")
TUNED_TYPES = ("ivf_flat", "ivf_pq", "ivf_pq_fs", "hnsw")
IDENTITY = "benchmark-scale"


# -- data ----------------------------------------------------------------------------------------------------
def real_embeddings(n_photos: int, dim: int, seed: int) -> tuple[np.ndarray | None, str]:
    """Embeddings of the first ``n_photos`` photos, or (None, why) when the model / photos are missing."""
    if n_photos <= 0:
        return None, "disabled (--photos 0)"
    photos = sorted((SHARED / "data" / "photos").glob("*.jpg"))[:n_photos]
    weights = SHARED / "models" / "taef2"
    if not photos or not weights.is_dir():
        return None, f"unavailable (no photos / TAEF2 under {SHARED})"
    try:
        from id2_plugin.assembly import default_projection_path
        from id2_plugin.embedders.base import Embedder, Projection, l2_normalise
        from id2_plugin.embedders.taesd import TAEF2Encoder
    except ImportError as exc:
        return None, f"unavailable ({exc})"
    encoder = TAEF2Encoder(weights=weights, device="cpu", batch_size=16)
    t = time.perf_counter()
    # Latents stay in memory: nothing decodable into an image is written (no latent cache).
    latents = np.concatenate(
        [
            encoder.encode_arrays(np.stack([encoder.normalise(p) for p in photos[s : s + 32]]))
            for s in range(0, len(photos), 32)
        ]
    )
    secs = time.perf_counter() - t
    w_path = default_projection_path("taef2")
    if w_path is not None and Projection.load(w_path).out_dim == dim:
        emb = Embedder(encoder, Projection.load(w_path))
        vecs = emb.project(latents)
        how = f"shipped W {w_path.name} ({emb.projection_id})"
    else:
        rng = np.random.default_rng(seed)
        proj = rng.standard_normal((latents.shape[1], dim)).astype(np.float32) / np.sqrt(dim)
        vecs = l2_normalise(latents @ proj)
        how = f"no shipped W of {dim} outputs: seeded random projection {latents.shape[1]}->{dim}"
    return vecs.astype(np.float32), f"{len(photos)} photos, TAEF2 latents ({secs:.0f} s), {how}"


@dataclass
class Synth:
    """Gaussian fit (mean + rank-r covariance + isotropic residual) that generates unit vectors by chunk."""

    mean: np.ndarray
    basis: np.ndarray  # r x d, rows scaled by the component standard deviations
    residual_std: float
    seed: int

    @classmethod
    def fit(cls, x: np.ndarray | None, dim: int, rank: int, seed: int) -> Synth:
        rank = min(rank, dim)
        if x is None:
            # No real data: a decaying spectrum around a random mean (anisotropic, like learned embeddings).
            rng = np.random.default_rng(seed)
            mean = rng.standard_normal(dim).astype(np.float32) * 0.02
            q, _ = np.linalg.qr(rng.standard_normal((dim, rank)))
            std = 0.12 / np.sqrt(1 + np.arange(rank))
            return cls(mean, (q.T * std[:, None]).astype(np.float32), 0.02, seed)
        mean = x.mean(axis=0)
        c = x - mean
        _, s, vt = np.linalg.svd(c, full_matrices=False)
        r = min(rank, len(x) - 1)
        var = s**2 / max(len(x) - 1, 1)
        resid = max(float(var[r:].sum()) / x.shape[1], 1e-8)
        return cls(
            mean.astype(np.float32),
            (vt[:r] * np.sqrt(var[:r])[:, None]).astype(np.float32),
            float(np.sqrt(resid)),
            seed,
        )

    def chunk(self, index: int, size: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, index])
        z = rng.standard_normal((size, self.basis.shape[0]), dtype=np.float32) @ self.basis
        z += self.mean
        z += self.residual_std * rng.standard_normal(z.shape, dtype=np.float32)
        return z / np.linalg.norm(z, axis=1, keepdims=True)


class References:
    """The reference set: ``real`` rows first, then synthetic chunks, all addressable by chunk."""

    def __init__(self, real: np.ndarray | None, synth: Synth, n: int, chunk: int) -> None:
        self.real = real if real is not None else np.zeros((0, synth.mean.shape[0]), np.float32)
        self.synth, self.n, self.chunk_size = synth, n, chunk

    def chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        """(first id, vectors) in order; memory = one chunk."""
        start = 0
        if len(self.real):
            yield 0, self.real[: self.n]
            start = min(len(self.real), self.n)
        i = 0
        while start < self.n:
            size = min(self.chunk_size, self.n - start)
            yield start, self.synth.chunk(i, size)
            start += size
            i += 1

    def rows(self, ids: np.ndarray) -> np.ndarray:
        out = np.empty((len(ids), self.synth.mean.shape[0]), np.float32)
        for start, x in self.chunks():
            sel = (ids >= start) & (ids < start + len(x))
            out[sel] = x[ids[sel] - start]
        return out


def exact_topk(refs: References, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k (scores, ids) over all references, streamed chunk by chunk (float32 numpy)."""
    from id2_plugin.stores._faiss_index import topk_blocks

    return topk_blocks(q, refs.chunks(), k)


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


# -- backends: how a store of one index type is made, sized, tuned and reopened ---------------------------------
class FaissBackend:
    """Stores in ``workdir/<type>`` through :class:`FaissStore`; IVF / HNSW tuned with ``tune_search``."""

    name, types, store_class = "faiss", ALL_TYPES, "FaissStore"

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args, self.workdir = args, workdir

    def location(self, kind: str) -> str:
        return str(self.workdir / kind)

    def built(self, kind: str) -> bool:
        return (self.workdir / kind / "store.sqlite").exists()

    def create(self, kind: str, opts: dict[str, Any], dim: int) -> FaissStore:
        self.remove(kind)
        return FaissStore(self.location(kind), IDENTITY, dim, index=kind, index_options=opts, create=True)

    def open(self, kind: str, search: dict[str, Any]) -> FaissStore:
        return FaissStore(self.location(kind))  # the tuned setting is saved in the store

    def remove(self, kind: str) -> None:
        shutil.rmtree(self.location(kind), ignore_errors=True)

    def sizes(self, store: FaissStore, kind: str) -> dict[str, Any]:
        info = store.info()
        sqlite_bytes = sum(f.stat().st_size for f in (self.workdir / kind).glob("store.sqlite*"))
        return {
            "count": info.count,
            "raw_mb": info.extra["raw_bytes"] / 1e6,
            "index_mb": info.extra["index_bytes"] / 1e6,
            "sqlite_mb": sqlite_bytes / 1e6,
            "disk_mb": info.extra["disk_bytes"] / 1e6,
            "search": info.extra["search"],
            **{k: info.extra[k] for k in ("nlist", "m", "nbits", "trained_on") if k in info.extra},
        }

    def tune(self, store: FaissStore, kind: str, refs: References) -> dict[str, Any]:
        if kind not in TUNED_TYPES:
            return {"param": "exact"}
        a = self.args
        tuned = tune_search(
            store, None, a.target_recall, n_queries=a.tune_queries, query_similarity=a.query_similarity, seed=a.seed + 1
        )
        rerank = f", rerank={tuned.extra['rerank']}" if "rerank" in tuned.extra else ""
        return {
            "param": f"{tuned.parameter}={tuned.value}{rerank}",
            "rerank_curve": tuned.extra.get("rerank_curve", []),
            "tune_recall": tuned.recall_at_1,
            "tune_reached": tuned.reached,
            "tune_curve": [vars(p) for p in tuned.curve],
        }

    def fresh_spec(self, kind: str) -> dict[str, Any]:
        return {"backend": self.name, "location": self.location(kind)}

    def default_types(self) -> tuple[str, ...]:
        return self.types

    def options(self, kind: str) -> dict[str, Any]:
        a = self.args
        if kind == "hnsw":
            return {"M": a.hnsw_M, "efConstruction": a.hnsw_ef_construction}
        if kind.startswith("ivf"):
            return {"max_train_per_list": a.max_train_per_list, **({"nlist": a.nlist} if a.nlist else {})}
        return {}

    def raw_scan(self, store: FaissStore, kind: str, q: np.ndarray) -> dict[str, float]:
        """Raw FAISS scan time of the exact indexes (no metadata lookup) -> effective memory bandwidth."""
        if kind not in ("flat", "flat_fp16"):
            return {}
        index = store._reader.state.buffer  # type: ignore[union-attr]
        raw = []
        for i in range(min(len(q), self.args.latency_queries)):
            t = time.perf_counter()
            index.search(q[i : i + 1], 10)
            raw.append(time.perf_counter() - t)
        bytes_scanned = store.info().count * q.shape[1] * (4 if kind == "flat" else 2)
        return {
            "faiss_b1_p50_ms": float(np.median(raw) * 1e3),
            "scan_gb_s": bytes_scanned / float(np.median(raw)) / 1e9,
        }


class QdrantBackend:
    """Collections ``scale_<type>`` on a Qdrant server (``--qdrant-url``) or in qdrant-client's local mode.

    Local mode (a folder in the workdir, no server) searches exactly whatever the index type, so only
    ``flat`` is measured there; on a server ``hnsw`` / ``hnsw_int8`` are swept over ``hnsw_ef`` like the
    FAISS types over nprobe / efSearch.
    """

    name, types, store_class = "qdrant", ("flat", "hnsw", "hnsw_int8"), "QdrantStore"
    EF_GRID = (16, 32, 64, 128, 256, 512)

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args, self.workdir, self.url = args, workdir, args.qdrant_url

    def location(self, kind: str) -> str:
        return self.url or str(self.workdir / f"qdrant_{kind}")

    @staticmethod
    def collection(kind: str) -> str:
        return f"scale_{kind}"

    def _client(self, kind: str) -> Any:
        from qdrant_client import QdrantClient

        return QdrantClient(url=self.url) if self.url else QdrantClient(path=self.location(kind))

    def built(self, kind: str) -> bool:
        if not self.url and not Path(self.location(kind)).is_dir():
            return False
        client = self._client(kind)
        try:
            return bool(client.collection_exists(self.collection(kind)))
        finally:
            client.close()

    def create(self, kind: str, opts: dict[str, Any], dim: int) -> QdrantStore:
        if not self.url and kind != "flat":
            raise SystemExit(
                f"--backend qdrant --types {kind} needs --qdrant-url: qdrant-client's local mode "
                "searches exactly whatever the index type"
            )
        self.remove(kind)
        return QdrantStore(
            self.location(kind),
            IDENTITY,
            dim,
            index=kind,
            index_options=opts,
            create=True,
            collection=self.collection(kind),
        )

    def open(self, kind: str, search: dict[str, Any]) -> QdrantStore:
        return QdrantStore(self.location(kind), index_options=search, collection=self.collection(kind))

    def remove(self, kind: str) -> None:
        if self.url:
            client = self._client(kind)
            try:
                client.delete_collection(self.collection(kind))
            finally:
                client.close()
        else:
            shutil.rmtree(self.location(kind), ignore_errors=True)

    def sizes(self, store: QdrantStore, kind: str) -> dict[str, Any]:
        disk = float("nan") if self.url else folder_bytes(Path(self.location(kind))) / 1e6
        info = store.info()  # one exact count: on a server it scans the collection
        return {
            "count": info.count,
            "raw_mb": info.count * store.dim * 4 / 1e6,
            "index_mb": float("nan"),
            "sqlite_mb": float("nan"),
            "disk_mb": disk,
            "search": {"mode": info.extra["mode"], "segments": info.extra["segments_count"]},
        }

    def tune(self, store: QdrantStore, kind: str, refs: References) -> dict[str, Any]:
        if kind == "flat":
            return {"param": "exact", "search_options": {}}
        a = self.args
        rng = np.random.default_rng(a.seed + 1)
        src = np.sort(rng.choice(refs.n, size=min(a.tune_queries, refs.n), replace=False))
        tq = perturbed_queries(refs.rows(src), a.query_similarity, rng)
        gt_s, gt_i = exact_topk(refs, tq, 1)

        def search(qq: np.ndarray, ef: int) -> np.ndarray:
            with self.open(kind, {"hnsw_ef": ef}) as s:
                return result_ids(s.query(qq, k=1), 1)[:, 0]

        curve = sweep(search, self.EF_GRID, tq, gt_i[:, 0], gt_s[:, 0], lambda i: refs.rows(i), a.target_recall)
        best = next((p for p in curve if p.recall_at_1 >= a.target_recall), curve[-1])
        return {
            "param": f"hnsw_ef={best.value}",
            "search_options": {"hnsw_ef": best.value},
            "tune_recall": best.recall_at_1,
            "tune_reached": best.recall_at_1 >= a.target_recall,
            "tune_curve": [vars(p) for p in curve],
        }

    def fresh_spec(self, kind: str) -> dict[str, Any]:
        return {"backend": self.name, "location": self.location(kind), "collection": self.collection(kind)}

    def default_types(self) -> tuple[str, ...]:
        return self.types if self.url else ("flat",)

    def options(self, kind: str) -> dict[str, Any]:
        return {"m": self.args.hnsw_M, "ef_construct": self.args.hnsw_ef_construction} if kind != "flat" else {}

    def raw_scan(self, store: QdrantStore, kind: str, q: np.ndarray) -> dict[str, float]:
        return {}


BACKENDS = {"faiss": FaissBackend, "qdrant": QdrantBackend}


# -- one index type: build, size, tune, measure -----------------------------------------------------------------
def result_ids(results: list[list[Any]], k: int) -> np.ndarray:
    """Reference numbers (the benchmark's sha256 is the row number in hex) of each query's top k, -1 padded."""
    return np.array([[int(m.sha256, 16) for m in r] + [-1] * (k - len(r)) for r in results], dtype=np.int64)


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
