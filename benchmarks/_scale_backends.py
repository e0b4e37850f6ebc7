"""The scale benchmark's store backends: how a store of one index type is made, sized, tuned and reopened."""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from _scale_data import References, exact_topk
from _scale_measure import folder_bytes

from id2_plugin.stores.faiss_store import FaissStore
from id2_plugin.stores.qdrant_store import QdrantStore
from id2_plugin.stores.tuning import perturbed_queries, sweep, tune_search

ALL_TYPES = ("flat", "flat_fp16", "ivf_flat", "ivf_pq", "ivf_pq_fs", "hnsw")
TUNED_TYPES = ("ivf_flat", "ivf_pq", "ivf_pq_fs", "hnsw")
IDENTITY = "benchmark-scale"


def result_ids(results: list[list[Any]], k: int) -> np.ndarray:
    """Reference numbers (the benchmark's sha256 is the row number in hex) of each query's top k, -1 padded."""
    return np.array([[int(m.sha256, 16) for m in r] + [-1] * (k - len(r)) for r in results], dtype=np.int64)


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
