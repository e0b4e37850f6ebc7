"""What naming the embedder costs per identified query, with W's digest cached and without.

    python benchmarks/identity_cost.py --photos 16 --md benchmarks/results/identity_cost.md

Every identification report names the embedder that made it (``embedder.identity`` and ``projection_id``,
which include the digest of W, a 32768 x 768 float32 matrix of ~100 MB). Until this was measured the digest
was a property recomputed on each access: three sha256 passes over W for every report (the ThreatExchange
adapter already kept its identity). Now it is computed once per loaded W. One process, one store of photos,
unrelated photos identified one at a time with the shipped defaults, each with the digest cached and with the
cache dropped before the call (what every query paid before), alternately so that the machine's load weighs
on both alike; nothing is written but a temporary store, removed at the end.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _output import emit  # noqa: E402
from _real_edits import SHARED  # noqa: E402

from id2_plugin.config import load_config  # noqa: E402
from id2_plugin.pipeline import Pipeline  # noqa: E402


def projections(embedder) -> list:
    """Every W inside the (fused) embedder."""
    parts = getattr(embedder, "parts", [embedder])
    return [p.projection for p in parts if getattr(p, "projection", None) is not None]


def timed(call, forget: list, cached: bool) -> tuple[float, float]:
    """(wall, process CPU) seconds of one ``call()``, after dropping the digests of ``forget`` unless ``cached``."""
    if not cached:
        for w in forget:
            w.__dict__.pop("digest", None)
    w0, c0 = time.perf_counter(), time.process_time()
    call()
    return time.perf_counter() - w0, time.process_time() - c0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=50, help="references in the store")
    ap.add_argument("--queries", type=int, default=16, help="unrelated photos identified")
    ap.add_argument("--md", type=Path, default=None)
    args = ap.parse_args()
    photos = sorted((SHARED / "data" / "photos").glob("*.jpg"))[: args.photos]
    queries = sorted((SHARED / "data" / "unrelated").glob("*.jpg"))[: args.queries]
    times: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(None, {"store": {"path": str(Path(tmp) / "store")}})
        with Pipeline.from_config(cfg, create_store=True) as pipeline:
            pipeline.add_files(photos)
            ws = projections(pipeline.embedder)
            pipeline.identify(queries[0])  # warm-up
            for q in queries:
                for cached in (True, False):
                    times[cached].append(timed(lambda q=q: pipeline.identify(q), ws, cached))
    rows = {k: np.median(np.array(v), axis=0) for k, v in times.items()}
    lines = [
        "# Naming the embedder: W's digest cached or recomputed for each report",
        "",
        f"`python benchmarks/identity_cost.py --photos {args.photos} --queries {args.queries}` on "
        f"{platform.machine()}, {os.cpu_count()} cores (shared), load average {os.getloadavg()[0]:.1f}; W "
        f"{ws[0].in_dim} x {ws[0].out_dim}; medians over {len(queries)} unrelated photos, windows `auto`.",
        "",
        "| W digest | wall s / query | CPU s / query |",
        "|---|---:|---:|",
        f"| recomputed for each report (before) | {rows[False][0]:.3f} | {rows[False][1]:.3f} |",
        f"| computed once (now) | {rows[True][0]:.3f} | {rows[True][1]:.3f} |",
        "",
        f"Now / before: wall {rows[True][0] / rows[False][0]:.2f}x, CPU {rows[True][1] / rows[False][1]:.2f}x.",
    ]
    emit(lines, args.md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
