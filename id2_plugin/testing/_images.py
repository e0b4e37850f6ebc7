"""Test pictures: deterministic synthetic ones (checks need images but no files) and the standard
"re-uploaded copy" and centre crop of a real one that adapter tests and examples identify."""

from __future__ import annotations

import io
import os

import numpy as np


def reupload_jpeg(image: np.ndarray | str | os.PathLike) -> bytes:
    """JPEG bytes of a typical re-upload of ``image`` (RGB array or image file): red +20 / blue -15, quality 50."""
    from PIL import Image

    if not isinstance(image, np.ndarray):
        image = np.asarray(Image.open(image).convert("RGB"))
    arr = image.astype(np.int16)
    arr[..., 0] += 20
    arr[..., 2] -= 15
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=50)
    return buf.getvalue()


def centre_crop_jpeg(image: str | os.PathLike, keep: float = 0.8) -> bytes:
    """JPEG bytes (quality 90) of the centre ``keep`` of each side of an image file: the edit PDQ misses."""
    from PIL import Image

    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep={keep} must lie in (0, 1]")
    img = Image.open(image).convert("RGB")
    w, h = img.size
    dx, dy = round(w * (1 - keep) / 2), round(h * (1 - keep) / 2)
    buf = io.BytesIO()
    img.crop((dx, dy, w - dx, h - dy)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def reupload_pixels(image: np.ndarray | str | os.PathLike) -> np.ndarray:
    """:func:`reupload_jpeg` decoded back to an RGB array (for in-memory pipelines such as benchmarks)."""
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(reupload_jpeg(image))).convert("RGB"))
