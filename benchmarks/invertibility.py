#!/usr/bin/env python
"""How much of a photo an embedding gives back: decode it with the TAEF2 decoder and measure PSNR.

    python benchmarks/invertibility.py [--photos 10] [--out benchmarks/results/invertibility.md]

For each photo (256x256, the embedder's input) the table compares what an attacker holding a stored vector
can decode: the raw TAEF2 latent (``projection: none``) decoded directly, and the shipped W embedding
inverted by W's best linear inverse (Moore-Penrose pseudo-inverse, plus W's centring mean) before decoding.
Two W rows: the embedding before L2 normalisation (its true scale: an upper bound), and the stored unit
vector rescaled by the mean norm of the other photos' embeddings (what an attacker can do). The mean latent alone
(no information about the photo) is the
floor. PSNR is over 8-bit RGB against the normalised input.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import numpy as np

SHARED = Path(os.environ.get("ID2_SHARED_DIR", Path(__file__).resolve().parent.parent.parent / "shared"))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10.0 * np.log10(255.0**2 / max(mse, 1e-12))


def decode(decoder: object, latents: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    import torch

    img = decoder.decode(torch.from_numpy(latents.reshape(-1, *shape).astype(np.float32)))  # type: ignore[attr-defined]
    return ((img.float().permute(0, 2, 3, 1).numpy() + 1.0) * 127.5).round().clip(0, 255).astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    from id2_plugin.assembly import load_projection
    from id2_plugin.embedders.taesd import TAEF2Decoder, TAEF2Encoder

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=10)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    all_photos = sorted((SHARED / "data" / "photos").glob("*.jpg"))
    photos = all_photos[:: max(1, len(all_photos) // args.photos)][: args.photos]  # spread over the classes
    weights = SHARED / "models" / "taef2"
    encoder = TAEF2Encoder(weights=weights, device="cpu", batch_size=8)
    decoder = TAEF2Decoder(weights=weights, device="cpu", dtype="float32")
    w = load_projection("default", "taef2")
    assert w is not None and w.pool == 1, "the measurement assumes the shipped unpooled W"
    shape = encoder.latent_shape

    images = np.stack([encoder.normalise(p) for p in photos])
    z = encoder.encode_arrays(images)
    mean = w.mean if w.mean is not None else np.zeros(w.in_dim, np.float32)
    y = w.apply(z, shape)  # the embedding before L2 normalisation
    inverse = np.linalg.pinv(w.weight.astype(np.float64)).astype(np.float32)
    # What a store holds is y / |y|: rescale each unit vector by the mean norm of the *other* photos' y.
    norms = np.linalg.norm(y, axis=1)
    guess = (norms.sum() - norms) / max(len(norms) - 1, 1)
    unit = y / norms[:, None] * guess[:, None]
    rows = {
        "raw latent (projection: none)": decode(decoder, z, shape),
        f"W embedding ({w.in_dim}x{w.out_dim}) at its true scale, through pinv(W)": decode(
            decoder, y @ inverse + mean, shape
        ),
        "stored unit W embedding, scale guessed from other photos, through pinv(W)": decode(
            decoder, unit @ inverse + mean, shape
        ),
        "mean latent only (no information)": decode(decoder, np.repeat(mean[None], len(z), 0), shape),
    }
    lines = [
        f"# Invertibility of stored vectors ({len(photos)} photos, 256x256, TAEF2 decoder)",
        "",
        f"`python benchmarks/invertibility.py --photos {args.photos}`; {platform.machine()}, "
        f"Python {sys.version.split()[0]}",
        "",
        "| decoded from | PSNR mean dB | min | max |",
        "|---|---:|---:|---:|",
    ]
    for name, out in rows.items():
        vals = [psnr(a, b) for a, b in zip(images, out)]
        lines.append(f"| {name} | {np.mean(vals):.2f} | {np.min(vals):.2f} | {np.max(vals):.2f} |")
    text = "\n".join(lines) + "\n"
    if args.out:  # the results file first: the table is also printed for the terminal
        args.out.write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
