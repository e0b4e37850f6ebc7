#!/usr/bin/env python
"""Reproduce the shipped default W for TAEF2 (``id2_plugin/weights/taef2_w.safetensors`` + ``taef2_w.json``).

Steps (each resumable; rerunning skips finished work):

1. split the photos BY PHOTO (seeded) into training origins and validation origins;
2. make offline proxy edits of both sets (``make_proxy_pairs``: pixel-space content/style edits + TAEF2
   latent regeneration + degradations: proxies for diffusion edits, not diffusion edits);
3. train W with CosFace (``train_projection``), validating on the held-out origins' proxy edits with all
   photos as the gallery;
4. evaluate on REAL diffusion edits (``real-edits-dev``: 27 edits of 15 origins, gallery = its originals +
   all photos) against the raw TAEF2 latent, and install W only if it is not worse than the raw latent
   there (top-1 and mAP), unless ``--force``.

Usage (from the project root; ~1-2 h on 2 CPU cores, mostly encoding)::

    python scripts/train_default_w.py --work-dir /tmp/id2-default-w
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"


def split_photos(photos: list[Path], n_val: int, seed: int) -> tuple[list[Path], list[Path]]:
    """Seeded split of the (sorted) photos into (training origins, validation origins)."""
    perm = np.random.default_rng(seed).permutation(len(photos))
    val = sorted(photos[i] for i in perm[:n_val])
    train = sorted(photos[i] for i in perm[n_val:])
    return train, val


def real_edits_eval(real_dir: Path, photos: list[Path], cache, projections: dict) -> dict[str, dict[str, float]]:
    """top-1 / mAP on the real edits (gallery: their originals + all photos) for the raw latent and each W."""
    from id2_plugin.train.pairs import load_pairs
    from id2_plugin.train.trainer import retrieval_metrics

    pairs = load_pairs(real_dir / "pairs.jsonl")
    originals = sorted({p.origin for p in pairs})
    gallery = originals + [p for p in photos if p not in set(originals)]
    col = {p: i for i, p in enumerate(gallery)}
    zq = cache.encode([p.query for p in pairs], progress="real edits")
    zg = cache.encode(gallery, progress="gallery")
    origin_idx = [col[p.origin] for p in pairs]
    shape = cache.encoder.latent_shape
    out = {"raw_latent": retrieval_metrics(zq, zg, origin_idx)}
    for name, proj in projections.items():
        out[name] = retrieval_metrics(proj.apply(zq, shape), proj.apply(zg, shape), origin_idx)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=Path, default=SHARED / "data" / "photos")
    ap.add_argument("--real-edits", type=Path, default=SHARED / "data" / "real-edits-dev")
    ap.add_argument("--work-dir", type=Path, required=True, help="Proxy edits, latent matrix, checkpoints.")
    ap.add_argument("--out", type=Path, default=ROOT / "id2_plugin" / "weights" / "taef2_w.safetensors")
    ap.add_argument("--n-val", type=int, default=143, help="Photos held out as validation origins.")
    ap.add_argument("--edits", type=int, default=3, help="Proxy edits per training origin.")
    ap.add_argument("--val-edits", type=int, default=2, help="Proxy edits per validation origin.")
    ap.add_argument("--latent-prob", type=float, default=0.3, help="Fraction of proxy edits regenerated through TAEF2.")
    ap.add_argument("--pool", type=int, default=2)
    ap.add_argument("--out-dim", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--init", default="lda", choices=["random", "pca", "lda"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stage", default="all", choices=["pairs", "train", "all"])
    ap.add_argument("--force", action="store_true", help="Install W even if it loses to the raw latent on real edits.")
    args = ap.parse_args(argv)

    from id2_plugin.cache import LatentCache
    from id2_plugin.embedders.base import Projection
    from id2_plugin.embedders.taesd import TAEF2Encoder
    from id2_plugin.train.make_pairs import make_proxy_pairs
    from id2_plugin.train.trainer import TrainConfig, train_projection

    photos = sorted(args.photos.glob("*.jpg"))
    train, val = split_photos(photos, args.n_val, args.seed)
    work = args.work_dir
    print(f"{len(train)} training origins, {len(val)} validation origins", flush=True)
    train_manifest = make_proxy_pairs(train, work / "train", edits_per_origin=args.edits, seed=args.seed, donors=train,
                                      latent_prob=args.latent_prob, device="cpu")
    val_manifest = make_proxy_pairs(val, work / "val", edits_per_origin=args.val_edits, seed=args.seed + 1, donors=val,
                                    latent_prob=args.latent_prob, device="cpu")
    if args.stage == "pairs":
        return 0

    encoder = TAEF2Encoder(device="cpu", batch_size=16)
    cache = LatentCache(encoder)
    cfg = TrainConfig(pool=args.pool, out_dim=args.out_dim, epochs=args.epochs, init=args.init, seed=args.seed, device="cpu")
    candidate = work / "taef2_w.safetensors"
    result = train_projection(
        train_manifest, candidate, encoder=encoder, config=cfg, val_pairs_path=val_manifest,
        cache_dir=work / "latents", latent_cache=cache, checkpoint_dir=work / "ckpt", resume=True,
    )
    real = real_edits_eval(args.real_edits, photos, cache, {"W": result.projection})
    report = {
        "proxy_validation": result.val_metrics,
        "real_edits_dev": real,
        "best_epoch": result.best_epoch,
        "config": cfg.schedule_key(),
        "split": {"n_train_origins": len(train), "n_val_origins": len(val), "edits": args.edits, "val_edits": args.val_edits,
                  "latent_prob": args.latent_prob},
        "command": "python scripts/train_default_w.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    print(json.dumps(report, indent=1))
    raw, w = real["raw_latent"], real["W"]
    if (w["top1"] < raw["top1"] or w["mAP"] < raw["mAP"]) and not args.force:
        print(f"NOT installing: W is below the raw latent on real edits (W {w}, raw {raw}); candidate kept at {candidate}")
        return 1
    Projection.load(candidate).save(args.out, dtype="float16")
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"installed {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
