#!/usr/bin/env python
"""Embedding throughput of the signals side by side in one run: id2 (TAEF2 + W), sscd, fused (both).

    python benchmarks/signals_throughput.py [--images 48] [--rounds 2] [--out benchmarks/results/signals_throughput.md]

Each round embeds the same photos with every embedder in turn (normalise + embed, batch 16), so machine
load shifts hit all of them alike; the table gives the best round per embedder and the ratio to id2.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _output import emit  # noqa: E402

SHARED = Path(os.environ.get("ID2_SHARED_DIR", Path(__file__).resolve().parent.parent.parent / "shared"))


def main(argv: list[str] | None = None) -> int:
    from id2_plugin.assembly import build_embedder
    from id2_plugin.config import EmbedderConfig

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    photos = sorted((SHARED / "data" / "photos").glob("*.jpg"))[: args.images]
    base = EmbedderConfig(device="cpu", batch_size=16)
    embedders = {
        name: build_embedder(dataclasses.replace(base, name=cfg_name))
        for name, cfg_name in (("id2", "taef2"), ("sscd", "sscd"), ("fused", "fused"))
    }
    for e in embedders.values():
        e.embed(photos[:2])  # warm-up
    best = {name: 0.0 for name in embedders}
    for _ in range(args.rounds):
        for name, e in embedders.items():
            t = time.perf_counter()
            for item in e.embed_iter(photos, batch_size=16):
                assert item.error is None
            best[name] = max(best[name], len(photos) / (time.perf_counter() - t))
    lines = [
        f"{len(photos)} photos, batch 16, best of {args.rounds} interleaved rounds; "
        f"{platform.machine()}, {os.cpu_count()} cores",
        "",
        "| embedder | dim | images/s | relative to id2 |",
        "|---|---:|---:|---:|",
    ]
    for name, rate in best.items():
        lines.append(f"| {name} | {embedders[name].dim} | {rate:.2f} | {rate / best['id2']:.2f}x |")
    lines += ["", f"`python benchmarks/signals_throughput.py {' '.join(argv if argv is not None else sys.argv[1:])}`"]
    emit(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
