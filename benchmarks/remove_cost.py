"""What removing one reference costs, per index type: time of ``FaissStore.remove`` and the bytes it writes.

Since removal also zeroes the vector row and, when the id sat in the ANN snapshot, writes a snapshot
without it (see the FaissStore docstring), a removal from an HNSW / IVF store costs one snapshot write.
Random unit vectors (seeded); the store lives in a temporary folder deleted at the end.

    python benchmarks/remove_cost.py --n 10000 --dim 512 --removals 3
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from id2_plugin.stores.faiss_store import FaissStore
from id2_plugin.types import ReferenceRecord

LAYOUTS = {
    "flat": ("flat", {}),
    "hnsw": ("hnsw", {"merge_min": 0}),
    "ivf_flat": ("ivf_flat", {"nlist": 64, "merge_min": 0}),
}


def _dir_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def measure(kind: str, opts: dict, n: int, dim: int, removals: int, seed: int) -> dict[str, float]:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    recs = [
        ReferenceRecord(sha256=hashlib.sha256(f"{seed}:{i}".encode()).hexdigest(), uri=f"ref/{i}") for i in range(n)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "s"
        with FaissStore(folder, "bench", dim, index=kind, index_options=opts, create=True) as store:
            store.add(x, recs)
            store.query(x[:1], k=1)  # loaded, as a serving process would be
            times = []
            for i in range(removals):
                t0 = time.perf_counter()
                store.remove([str(i * 7 + 1)])
                times.append(time.perf_counter() - t0)
            return {
                "remove_s": statistics.median(times),
                "store_mb": _dir_bytes(folder) / 1e6,
                "indexed": float(store.info().extra.get("indexed", 0)),
            }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--removals", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print("| index | references | dim | median remove (s) | store on disk (MB) |")
    print("|---|---:|---:|---:|---:|")
    for name, (kind, opts) in LAYOUTS.items():
        r = measure(kind, opts, args.n, args.dim, args.removals, args.seed)
        print(f"| {name} | {args.n} | {args.dim} | {r['remove_s']:.3f} | {r['store_mb']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
