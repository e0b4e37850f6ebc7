#!/usr/bin/env python
"""SSCD preprocessing, side by side on the real edits: square 320 / square 256 (squash, batched) against
small edge 288 (aspect kept, one image per run), every query among all origins + the 793 photos.

    python benchmarks/sscd_preprocessing.py --work-dir /tmp/id2-feat --out benchmarks/results/sscd_preprocessing.md

Descriptors are cached in --work-dir (SSCD descriptors are not images, but the folder is the caller's).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _real_edits import cached, load_real_edits, sscd_features  # noqa: E402

MODES = ("square320", "square256", "edge288")


def main(argv: list[str] | None = None) -> int:
    from id2_plugin.metrics import compute_metrics

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work-dir", type=Path, required=True)
    ap.add_argument("--timing-images", type=int, default=48, help="Images timed per mode (fresh, not cached).")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    d = load_real_edits()
    g = d.gallery_rows
    col = {int(r): i for i, r in enumerate(g)}
    origin_col = np.array([col[int(r)] for r in d.origin_rows])
    sets = np.array(d.sets)
    lines = [
        "| SSCD input | set | queries | top-1 | mAP | micro-AP | img/s (one process, 2 cores) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for mode in MODES:
        x = cached(args.work_dir, f"sscd_{mode}", d.paths, lambda p, mode=mode: sscd_features(p, mode))
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        t0 = time.perf_counter()
        sscd_features(d.paths[: args.timing_images], mode)
        rate = args.timing_images / (time.perf_counter() - t0)
        sims = x[d.query_rows] @ x[g].T
        for name in ("train", "dev", "all"):
            sel = np.flatnonzero(sets == name) if name != "all" else np.arange(len(sets))
            pos = np.zeros((len(sel), len(g)), bool)
            pos[np.arange(len(sel)), origin_col[sel]] = True
            m = compute_metrics(sims[sel], pos)
            lines.append(
                f"| {mode} | {name} | {len(sel)} | {m.top1:.3f} | {m.mAP:.3f} | {m.micro_ap:.3f} | {rate:.1f} |"
            )
    text = "\n".join(lines) + f"\n\n`python benchmarks/sscd_preprocessing.py {' '.join(argv or sys.argv[1:])}`\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
