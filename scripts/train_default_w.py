#!/usr/bin/env python
"""Reproduce the shipped default W for TAEF2 (``id2_plugin/weights/taef2_w.safetensors`` + ``taef2_w.json``).

Steps (each resumable; rerunning skips finished work):

1. split the photos BY PHOTO (seeded) into training origins and validation origins;
2. make offline proxy edits of both sets (``make_proxy_pairs``: pixel-space content/style edits + TAEF2
   latent regeneration + degradations: proxies for diffusion edits, not diffusion edits), in three kinds:
   general edits, scene edits (the subject re-staged smaller in another photo's scene: ``scene_prob=1``)
   and tight crops (``crop_prob=1``); each kind has its own seed, and the kinds are merged per split;
3. train W with CosFace (``train_projection``), validating on the held-out origins' proxy edits with all
   photos as the gallery;
4. measure W against the raw TAEF2 latent on each validation kind, on crops of the validation photos
   (``--crop-keep``) and on REAL diffusion edits (``real-edits-dev``: 27 edits of 15 origins, gallery = its
   originals + all photos), and install W only if it is not worse than the raw latent on the real edits
   and the crops (top-1 and mAP), unless ``--force``.

Usage (from the project root; ~2 h on 2 CPU cores, mostly making and encoding ~9,300 images)::

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


def merge_manifests(manifests: list[Path], out: Path) -> Path:
    """One manifest with the pairs of ``manifests`` in order (paths re-written relative to ``out``)."""
    from id2_plugin.train.pairs import load_pairs, write_pairs

    return write_pairs(out, [p for m in manifests for p in load_pairs(m)])


def compare(zq: np.ndarray, zg: np.ndarray, origin_idx: list[int], projection, shape) -> dict[str, dict[str, float]]:
    """top-1 / mAP / micro-AP of the raw latent and of W for query latents against gallery latents."""
    from id2_plugin.train.trainer import retrieval_metrics

    def rounded(m: dict[str, float]) -> dict[str, float]:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in m.items()}

    return {"raw_latent": rounded(retrieval_metrics(zq, zg, origin_idx)),
            "W": rounded(retrieval_metrics(projection.apply(zq, shape), projection.apply(zg, shape), origin_idx))}


def measure(projection, cache, photos: list[Path], val: list[Path], val_manifests: dict[str, Path], real_dir: Path,
            crop_keep: float) -> dict[str, dict[str, dict[str, float]]]:
    """W against the raw latent on every check the shipped W must pass (galleries include all photos)."""
    from id2_plugin.robustness.attacks import Crop
    from PIL import Image

    from id2_plugin.train.pairs import load_pairs

    shape = cache.encoder.latent_shape
    col = {p.resolve(): i for i, p in enumerate(photos)}
    zg = cache.encode(photos, progress="gallery")
    out = {}
    for name, manifest in val_manifests.items():
        pairs = load_pairs(manifest)
        out[f"proxy_val{name}"] = compare(cache.encode([p.query for p in pairs], progress=name or "val"), zg,
                                          [col[p.origin.resolve()] for p in pairs], projection, shape)
    # Crops are where a W can lose to the raw latent (it is tuned to the layout): keep that in check.
    crop = Crop(crop_keep)
    crops = np.stack([cache.encoder.normalise(crop(np.asarray(Image.open(p).convert("RGB")), i)) for i, p in enumerate(val)])
    out[f"crop{crop_keep:g}"] = compare(cache.encode_arrays(crops), zg, [col[p.resolve()] for p in val], projection, shape)
    pairs = load_pairs(real_dir / "pairs.jsonl")
    originals = sorted({p.origin for p in pairs})
    # Gallery: the originals, then the photos already encoded above (minus any that is an original).
    known = set(originals)
    others = [i for i, p in enumerate(photos) if p.resolve() not in known]
    zr = np.concatenate([cache.encode(originals), zg[others]])
    rcol = {p: i for i, p in enumerate(originals)}
    out["real_edits_dev"] = compare(cache.encode([p.query for p in pairs], progress="real edits"), zr,
                                    [rcol[p.origin] for p in pairs], projection, shape)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=Path, default=SHARED / "data" / "photos")
    ap.add_argument("--real-edits", type=Path, default=SHARED / "data" / "real-edits-dev")
    ap.add_argument("--work-dir", type=Path, required=True, help="Proxy edits, latent matrix, checkpoints.")
    ap.add_argument("--out", type=Path, default=ROOT / "id2_plugin" / "weights" / "taef2_w.safetensors")
    ap.add_argument("--n-val", type=int, default=143, help="Photos held out as validation origins.")
    ap.add_argument("--edits", type=int, default=6, help="General proxy edits per training origin.")
    ap.add_argument("--val-edits", type=int, default=2, help="General proxy edits per validation origin.")
    ap.add_argument("--scene-edits", type=int, default=3, help="Scene edits (subject re-staged) per training origin.")
    ap.add_argument("--scene-val-edits", type=int, default=2, help="Scene edits per validation origin.")
    ap.add_argument("--crop-edits", type=int, default=2, help="Tight-crop edits per training origin.")
    ap.add_argument("--crop-val-edits", type=int, default=1, help="Tight-crop edits per validation origin.")
    ap.add_argument("--latent-prob", type=float, default=0.3, help="Fraction of proxy edits regenerated through TAEF2.")
    ap.add_argument("--pool", type=int, default=2)
    ap.add_argument("--out-dim", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--init", default="lda", choices=["random", "pca", "lda"])
    ap.add_argument("--init-rank", type=int, default=1024, help="PCA subspace kept before LDA.")
    ap.add_argument("--whiten-eps", type=float, default=10.0, help="Whitening regulariser of the LDA init (higher: closer to the raw latent).")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stage", default="all", choices=["pairs", "train", "all"])
    ap.add_argument("--crop-keep", type=float, default=0.6, help="Crop check: keep this fraction of each side of the validation photos.")
    ap.add_argument("--force", action="store_true", help="Install W even if it loses to the raw latent on real edits or crops.")
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
    kinds = [  # (name, edits per training origin, per validation origin, seed offset, options)
        ("", args.edits, args.val_edits, 0, {}),
        ("_scene", args.scene_edits, args.scene_val_edits, 10, {"scene_prob": 1.0}),
        ("_crop", args.crop_edits, args.crop_val_edits, 20, {"crop_prob": 1.0}),
    ]
    # per split: kind suffix -> manifest (kinds with 0 edits are left out)
    manifests: dict[str, dict[str, Path]] = {"train": {}, "val": {}}
    for suffix, n_train, n_val, offset, options in kinds:
        for split, origins, n, extra in (("train", train, n_train, 0), ("val", val, n_val, 1)):
            if n:
                manifests[split][suffix] = make_proxy_pairs(
                    origins, work / f"{split}{suffix}", edits_per_origin=n, seed=args.seed + offset + extra, donors=origins,
                    latent_prob=args.latent_prob, device="cpu", **options,
                )
    train_manifest = merge_manifests(list(manifests["train"].values()), work / "train_all" / "pairs.jsonl")
    val_manifest = merge_manifests(list(manifests["val"].values()), work / "val_all" / "pairs.jsonl")
    if args.stage == "pairs":
        return 0

    encoder = TAEF2Encoder(device="cpu", batch_size=16)
    cache = LatentCache(encoder)
    cfg = TrainConfig(pool=args.pool, out_dim=args.out_dim, epochs=args.epochs, init=args.init, init_rank=args.init_rank,
                      whiten_eps=args.whiten_eps, seed=args.seed, device="cpu")
    candidate = work / "taef2_w.safetensors"
    result = train_projection(
        train_manifest, candidate, encoder=encoder, config=cfg, val_pairs_path=val_manifest,
        cache_dir=work / "latents", latent_cache=cache, checkpoint_dir=work / "ckpt", resume=True,
    )
    checks = measure(result.projection, cache, photos, val, manifests["val"], args.real_edits, args.crop_keep)
    report = {
        "checks": checks,
        "best_epoch": result.best_epoch,
        "history": result.history,
        "config": cfg.schedule_key(),
        "split": {"n_train_origins": len(train), "n_val_origins": len(val), "latent_prob": args.latent_prob,
                  "edits": {f"train{k[0]}": k[1] for k in kinds} | {f"val{k[0]}": k[2] for k in kinds}},
        "command": "python scripts/train_default_w.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    print(json.dumps(checks, indent=1))
    losing = [name for name in ("real_edits_dev", f"crop{args.crop_keep:g}")
              if any(checks[name]["W"][k] < checks[name]["raw_latent"][k] for k in ("top1", "mAP"))]
    if losing and not args.force:
        print(f"NOT installing: W is below the raw latent on {', '.join(losing)}; candidate kept at {candidate}")
        return 1
    Projection.load(candidate).save(args.out, dtype="float16")
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"installed {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
