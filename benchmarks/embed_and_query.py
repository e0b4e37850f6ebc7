"""Throughput of normalise+embed (batch 1 and 32) and query latency on 10k references, on this machine.

    python benchmarks/embed_and_query.py [--images 64] [--refs 10000] [--queries 200]

References beyond the real photos are synthetic unit vectors with the same dimension (search cost does
not depend on their content). Prints a markdown table; ``--json`` writes the numbers too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from id2_plugin.assembly import build_embedder
from id2_plugin.config import EmbedderConfig
from id2_plugin.types import ReferenceRecord

SHARED = Path(os.environ.get("ID2_SHARED_DIR", Path(__file__).resolve().parent.parent.parent / "shared"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--refs", type=int, default=10_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--projection", default="default")
    ap.add_argument("--json", dest="json_out", default=None)
    args = ap.parse_args()
    import torch

    from id2_plugin.stores.faiss_store import FaissStore

    photos = sorted((SHARED / "data" / "photos").glob("*.jpg"))[: args.images]
    emb = build_embedder(EmbedderConfig(projection=args.projection, allow_raw_latent=True, device="cpu", batch_size=32))
    emb.embed(photos[:2])  # warm-up: first call allocates
    rows = {}
    for bs in (1, 32):
        t = time.perf_counter()
        for s in range(0, len(photos), bs):
            emb.embed(photos[s : s + bs])
        rows[f"normalise+embed, batch {bs} (images/s)"] = len(photos) / (time.perf_counter() - t)
    rng = np.random.default_rng(0)
    real = emb.embed(photos)
    synth = rng.standard_normal((args.refs - len(real), emb.dim)).astype(np.float32)
    refs = np.concatenate([real, synth / np.linalg.norm(synth, axis=1, keepdims=True)])
    with tempfile.TemporaryDirectory() as d:
        store = FaissStore(Path(d) / "s", embedder_identity=emb.identity, dim=emb.dim, create=True)
        recs = [ReferenceRecord(sha256=f"{i:064x}", uri=f"ref{i}") for i in range(len(refs))]
        store.add(refs, recs)
        q = refs[rng.integers(0, len(refs), args.queries)] + 0.01 * rng.standard_normal((args.queries, emb.dim)).astype(
            np.float32
        )
        lat = []
        for v in q:
            t = time.perf_counter()
            store.query(v[None], k=5)
            lat.append((time.perf_counter() - t) * 1e3)
        store.close()
    rows[f"query p50 on {len(refs)} refs, k=5 (ms)"] = float(np.percentile(lat, 50))
    rows[f"query p99 on {len(refs)} refs, k=5 (ms)"] = float(np.percentile(lat, 99))
    print(
        f"embedder {emb.identity} (dim {emb.dim}); torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    )
    print("| measure | value |\n|---|---|")
    for k, v in rows.items():
        print(f"| {k} | {v:.2f} |")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
