#!/usr/bin/env python
"""Side by side, by grouped cross-validation on REAL edit pairs: ways of building W for TAEF2.

The real pairs of ``real-edits-train`` and ``real-edits-dev`` (127 edits, 86 origins) are split into folds by
origin group (near-copies of a photo stay together); each fold's queries are searched among ALL origins +
the 793 photos, with a W fitted without that fold's pairs. Unsupervised maps see only the photos. The same
code chooses W in ``id2-plugin train --recipe auto`` (``id2_plugin.train.real_pairs``).

    python benchmarks/w_recipes.py --work-dir /tmp/id2-feat --out benchmarks/results/w_recipes.json

TAEF2 latents are cached in --work-dir, which the caller chooses: latents can be decoded into images.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _real_edits import ROOT, cached, load_real_edits, taef2_latents  # noqa: E402


def pooled(z: np.ndarray, pool: int, shape=(32, 32, 32)) -> np.ndarray:
    if pool == 1:
        return z
    c, h, w = shape
    return z.reshape(len(z), c, h // pool, pool, w // pool, pool).mean(axis=(3, 5)).reshape(len(z), -1)


def candidates(grid: str):
    from id2_plugin.train.real_pairs import Recipe

    out = []
    if grid == "shipped":  # the recipe scripts/train_default_w.py chose
        return [Recipe("pca", pool=1, rank=768, eps=0.03)]
    if grid == "pca":
        for pool in (1, 2):
            for rank in (256, 512, 768, 792):
                for eps in (0.01, 0.03, 0.1, 1.0, 10.0):
                    for power in (0.5, 0.25):
                        out.append(Recipe("pca", pool=pool, rank=rank, eps=eps, power=power))
        return out
    for pool in (1, 2):
        for rank in (512, 768):
            for eps in (0.03, 0.1):
                base = Recipe("pca", pool=pool, rank=rank, eps=eps)
                out.append(base)
                out += [dataclasses.replace(base, kind="pair-whiten", shrink=s) for s in (0.2, 0.4, 0.6, 0.8)]
                if pool == 2:  # CosFace on the 32768-d latent is minutes per fold on 2 cores
                    out += [dataclasses.replace(base, kind="cosface", anchor=a, steps=100) for a in (0.3, 3.0)]
    return out


def main(argv: list[str] | None = None) -> int:
    from id2_plugin.embedders.base import Projection, l2_normalise
    from id2_plugin.train.crossval import cross_validate, grouped_folds, origin_groups
    from id2_plugin.train.real_pairs import PairData, raw_baseline, select_recipe

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work-dir", type=Path, required=True)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--grid", choices=["pca", "learned", "shipped"], default="learned")
    ap.add_argument(
        "--compare-w",
        type=Path,
        default=ROOT / "id2_plugin" / "weights" / "taef2_w.safetensors",
        help="A W file scored beside the recipes (e.g. the previous proxy-trained W).",
    )
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    d = load_real_edits()
    z = cached(args.work_dir, "taef2", d.paths, taef2_latents)
    data = PairData(
        {p: pooled(z, p) for p in (1, 2)}, d.photo_rows, d.query_rows, d.origin_rows, d.gallery_rows, d.families
    )
    groups = dict(zip(d.origin_set_rows.tolist(), origin_groups(z[d.origin_set_rows]).tolist()))
    folds = grouped_folds([groups[int(r)] for r in d.origin_rows], args.folds, seed=args.seed)
    print(
        f"{len(d.query_rows)} real edits, {len(d.origin_set_rows)} origins in {len(set(groups.values()))} groups, "
        f"gallery {len(d.gallery_rows)}, {args.folds} folds"
    )
    raw = raw_baseline(data, folds)
    shipped = Projection.load(args.compare_w)
    ship = cross_validate(
        f"W {args.compare_w.name}",
        lambda _t: lambda rows: l2_normalise(shipped.apply(z[rows], (32, 32, 32))),
        d.query_rows,
        data.origin_col,
        d.gallery_rows,
        folds,
        d.families,
    )
    for r in (raw, ship):
        print(f"{r.name:60s} top1 {r.pooled['top1']:.3f} mAP {r.pooled['mAP']:.3f} micro-AP {r.pooled['micro_ap']:.3f}")
    chosen, results = select_recipe(candidates(args.grid), data, folds)
    print(f"chosen: {chosen.name}")
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "command": "python benchmarks/w_recipes.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                    "chosen": chosen.name,
                    "baselines": [raw.to_dict(), ship.to_dict()],
                    "results": [r.to_dict() for r in results],
                },
                indent=1,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
