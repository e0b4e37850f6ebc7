"""Query windows pooled from one pass of SSCD's feature map instead of nine crops: as good, and cheaper?

    PYTHONPATH=. python benchmarks/pooled_windows.py --cache /tmp/i24 --md benchmarks/results/pooled_windows.md

(the first run fills the cache: whole-image and crop-window vectors ~12 minutes, the pooled windows ~6 more on 2
CPU cores; the cached vectors decode back into near-copies of the photos, so delete the folder after use).

Issue 23 asked whether the second look could be made cheap with "window descriptors pooled from one forward
pass of SSCD's feature map". SSCD pools its last convolutional map by GeM (p = 3) and projects the pooled 2048-d
vector to its 512-d descriptor (``late_interaction.SSCDMaps`` exposes the map; pooling the whole map reproduces
the descriptor). Here each of the nine query windows (the 3 x 3 grid of half-size squares the shipped second
look crops, ``framing.query_windows``) is instead the GeM of its region of the map, projected the same way:
from the shipped 320 px pass (10 x 10 cells, free: the whole image's pass already computes the map; windows of
6 x 6 cells), or from one more pass at 384 px (12 x 12, windows of 6 x 6) or 640 px (20 x 20, windows of
10 x 10, the crops' scale). Same candidates (``decision.DEFAULT_RANKINGS``), features, folds (seeds 0-9) and
operating point as ``candidate_source.py``; each row replaces only the window vectors, with the window floor
bounded as shipped (30% of unrelated queries) and as fitted without the bound.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _decision_tables import report_header, row_labels, seed_table, write_report  # noqa: E402
from _real_edits import cached  # noqa: E402
from candidate_source import ID2_ALONE, SHIPPED, union, with_candidates  # noqa: E402
from late_interaction import SSCDMaps  # noqa: E402
from reference_crops import (  # noqa: E402
    SEEDS,
    VARIANTS,
    Embeddings,
    build_problem,
    decide,
    embed_everything,
    feature_rows,
    load_images,
)

from id2_plugin.decision_fit import WINDOW_BUDGET  # noqa: E402
from id2_plugin.embedders.base import l2_normalise  # noqa: E402
from id2_plugin.framing import WINDOW_GRID, query_windows  # noqa: E402

#: SSCD input side -> cells per window side (half the map, or 6 of 10 at the shipped 320 px)
PASSES = {320: 6, 384: 6, 640: 10}
GEM_P, GEM_EPS = 3.0, 1e-6


def pooled_windows(maps: SSCDMaps, cells: np.ndarray, side: int) -> np.ndarray:
    """``N x 9 x 512`` unit descriptors: GeM over each window's ``side`` x ``side`` cells of the ``N x cells x
    2048`` maps, through SSCD's projection."""
    g = int(round(np.sqrt(cells.shape[1])))
    fmap = np.power(np.maximum(cells.reshape(len(cells), g, g, -1), GEM_EPS), GEM_P)
    steps = [round(i * (g - side) / (WINDOW_GRID - 1)) for i in range(WINDOW_GRID)]
    pooled = [np.power(fmap[:, y : y + side, x : x + side].mean(axis=(1, 2)), 1 / GEM_P) for y in steps for x in steps]
    return np.stack([l2_normalise(w @ maps.weight.T + maps.bias) for w in pooled], axis=1)


def window_vectors(emb: Embeddings, size: int, paths: list[str]) -> np.ndarray:
    maps = SSCDMaps(size)
    out = []
    for s in range(0, len(paths), 16):
        _, cells = maps.run(np.stack([emb.fused.normalise(p) for p in paths[s : s + 16]]))
        out.append(pooled_windows(maps, cells, PASSES[size]))
    return np.concatenate(out)


def measure_cost(emb: Embeddings, paths: list[str], n: int = 16) -> dict[str, float]:
    """Median seconds per query of each way to get the nine window vectors, timed one query after the other
    (the shared CPU's load weighs on all alike), after one warm-up query."""
    maps = {size: SSCDMaps(size) for size in PASSES}
    t: dict[str, list[float]] = {"crops": [], **{f"pooled {s}": [] for s in PASSES}, "whole": []}
    for path in [paths[0], *paths[:: max(1, len(paths) // n)][:n]]:
        image = emb.fused.normalise(path)
        t0 = time.perf_counter()
        emb.sscd.embed_arrays(image[None])
        t["whole"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        emb.sscd.embed_arrays(query_windows(image)[1])
        t["crops"].append(time.perf_counter() - t0)
        for size, m in maps.items():
            t0 = time.perf_counter()
            pooled_windows(m, m.run(image[None])[1], PASSES[size])
            t[f"pooled {size}"].append(time.perf_counter() - t0)
    return {k: float(np.median(v[1:])) for k, v in t.items()} | {"n": n, "load": os.getloadavg()[0]}


def cost_lines(cost: dict[str, float]) -> list[str]:
    lines = [
        f"Seconds per query for the nine window vectors (median of {cost['n']} queries timed one by one, load "
        f"average {cost['load']:.1f} on the shared 2 CPUs); the whole image's SSCD pass at 320 px took "
        f"{cost['whole']:.3f} s. The pooled 320 px windows need that pass's map as a second output, so their "
        "whole cost is one such pass; counted here as if run again.",
        "",
        "| window vectors | s / query | ratio to nine crops |",
        "|---|---:|---:|",
    ]
    for k in ("crops", *(f"pooled {s}" for s in PASSES)):
        lines.append(f"| {k} | {cost[k]:.3f} | {cost[k] / cost['crops']:.2f} |")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, help="folder of cached vectors (filled on the first run)")
    ap.add_argument("--md", type=Path, help="write the report here (it is printed either way)")
    args = ap.parse_args()
    t0 = time.time()
    im, emb = load_images(), Embeddings()
    v = embed_everything(im, emb, args.cache, crops=False)
    asking = [im.paths[i] for i in np.concatenate([im.queries, im.negatives])]
    windows = {"nine crops (shipped)": v["windows"]}
    for size in PASSES:
        compute = lambda paths, size=size: window_vectors(emb, size, paths)  # noqa: E731
        vectors = cached(args.cache, f"pooled_windows_{size}", asking, compute) if args.cache else compute(asking)
        windows[f"pooled from one {size} px pass"] = vectors
    runs = {}
    for name, w in windows.items():
        alone = build_problem(im, dict(v, windows=w), ID2_ALONE)
        p = union(alone, with_candidates(alone, SHIPPED, 1))
        features = feature_rows(p, VARIANTS[0])
        for label, budget in (("floor bounded (shipped)", WINDOW_BUDGET), ("floor not bounded", None)):
            runs[f"{name}, {label}"] = [decide(p, features, seed, budget) for seed in SEEDS]
    labels, legend = row_labels(runs)
    agreement = {k: float(np.median((w * v["windows"]).sum(-1))) for k, w in windows.items()}
    lines = [
        *report_header("Query windows pooled from SSCD's feature map", t0),
        "",
        "Median cosine of each window vector to the crop's: "
        + "; ".join(f"{k} {a:.3f}" for k, a in agreement.items() if "crops" not in k)
        + ".",
        "",
        legend,
        "",
        *seed_table(runs, next(iter(runs)), None, labels),
        "",
        *cost_lines(measure_cost(emb, asking)),
    ]
    write_report("\n".join(lines) + "\n", args.md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
