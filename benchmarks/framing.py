"""Framing figures (issue 15): letterbox, 2x canvas, rotation and mirror, with the framing options off and on.

    python benchmarks/framing.py [--queries 20] [--distractors 80] [--save FILE.md]

Gallery = the query photos' origins + distractors from the shared photos, embedded by the default embedder
(fused id2 + SSCD when SSCD resolves). Each query is an origin re-framed: shown inside a 640x360 black
frame (letterbox / pillarbox, JPEG q85), pasted centred on a white canvas twice its size, turned 90 degrees
clockwise, mirrored. Reported per condition: mean cosine to the origin, top-1 over the gallery and the
share reported as a MATCH (top-1 and at least ``match.threshold``, the decision ``query`` prints), with
``media.unletterbox`` off and on (borders), and ``match.rotations`` / ``match.mirror`` off and on (turns),
plus the embedding time per query, which grows with the number of orientation variants. Nothing is written
except ``--save``.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _framing import PHOTOS, publish  # noqa: E402


def letterboxed(img: Image.Image) -> Image.Image:
    fitted = img.copy()
    fitted.thumbnail((640, 360), Image.Resampling.BICUBIC)
    frame = Image.new("RGB", (640, 360), (0, 0, 0))
    frame.paste(fitted, ((640 - fitted.width) // 2, (360 - fitted.height) // 2))
    buf = io.BytesIO()
    frame.save(buf, "JPEG", quality=85)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def on_canvas(img: Image.Image) -> Image.Image:
    canvas = Image.new("RGB", (2 * img.width, 2 * img.height), (255, 255, 255))
    canvas.paste(img, (img.width // 2, img.height // 2))
    return canvas


def best_scores(embedder, images: list[np.ndarray], gallery: np.ndarray, rotations=(0,), mirror=False):
    """Per query, the gallery scores maximised over the orientation variants (what identification keeps)."""
    from id2_plugin.framing import orient, orientation_variants

    variants = orientation_variants(rotations, mirror)
    t0 = time.perf_counter()
    vecs = embedder.embed_arrays(np.stack([orient(im, r, m) for im in images for r, m in variants]))
    seconds = (time.perf_counter() - t0) / len(images)
    scores = (vecs @ gallery.T).reshape(len(images), len(variants), -1).max(axis=1)
    return scores, seconds


def row(name: str, setting: str, scores: np.ndarray, seconds: float, threshold: float) -> str:
    n = len(scores)
    own = scores[np.arange(n), np.arange(n)]
    top = scores.argmax(axis=1) == np.arange(n)
    matched = float((top & (own >= threshold)).mean())
    return f"| {name} | {setting} | {own.mean():.3f} | {top.mean():.2f} | {matched:.2f} | {seconds:.2f} |"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--distractors", type=int, default=80)
    ap.add_argument("--save", type=Path, default=None)
    args = ap.parse_args(argv)

    from id2_plugin.assembly import build_embedder
    from id2_plugin.config import load_config
    from id2_plugin.media import MediaLimits, load_image

    paths = sorted(PHOTOS.glob("*.jpg"))
    origins = paths[3::37][: args.queries]
    distractors = [p for p in paths[1::7] if p not in origins][: args.distractors]
    cfg = load_config(None, {"embedder": {"device": "cpu"}})
    on = build_embedder(cfg.embedder, MediaLimits(unletterbox=True))
    off = build_embedder(cfg.embedder, MediaLimits(unletterbox=False))
    gallery = on.embed_arrays(np.stack([on.normalise(p) for p in [*origins, *distractors]]))
    photos = [load_image(p) for p in origins]
    lines = [
        f"embedder: `{on.identity}`",
        f"gallery: {len(gallery)} photos ({len(origins)} queried origins)",
        "",
        f"| query | setting | mean cosine to origin | top-1 | MATCH at {cfg.match.threshold} | embed s/query |",
        "|---|---|---|---|---|---|",
    ]
    t = cfg.match.threshold
    for name, edit in (("640x360 letterbox/pillarbox", letterboxed), ("2x white canvas", on_canvas)):
        queries = [edit(p) for p in photos]
        for label, emb in (("unletterbox off", off), ("unletterbox on", on)):
            lines.append(row(name, label, *best_scores(emb, [emb.normalise(q) for q in queries], gallery), t))
    turns = (
        ("rotated 90 deg", lambda a: np.rot90(a, k=-1), {"rotations": (0, 90, 180, 270)}),
        ("mirrored", lambda a: a[:, ::-1], {"mirror": True}),
    )
    for name, edit, option in turns:
        images = [on.normalise(np.ascontiguousarray(edit(np.asarray(p)))) for p in photos]
        lines.append(row(name, "upright only", *best_scores(on, images, gallery), t))
        setting = ", ".join(f"{k}={list(v) if isinstance(v, tuple) else v}" for k, v in option.items())
        lines.append(row(name, setting, *best_scores(on, images, gallery, **option), t))
    return publish(
        lines, args.save, f"python benchmarks/framing.py --queries {args.queries} --distractors {args.distractors}"
    )


if __name__ == "__main__":
    sys.exit(main())
