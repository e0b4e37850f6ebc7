"""What the examples share: where the real photos live and the one "degraded copy" they all identify.

The examples run as scripts from this folder, so Python puts it on ``sys.path`` and they import this
module by name (``from _common import ...``); it is not part of the installed package.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

SHARED = Path(os.environ.get("ID2_SHARED_DIR", Path(__file__).resolve().parent.parent.parent / "shared"))


def shared_photos(n: int) -> list[Path]:
    """The first ``n`` of ../shared/data/photos, sorted by name so every run uses the same ones."""
    return sorted((SHARED / "data" / "photos").glob("*.jpg"))[:n]


def colour_jpeg50_bytes(image: np.ndarray) -> bytes:
    """JPEG (quality 50) of an RGB array after a red +20 / blue -15 colour shift: a typical re-upload."""
    arr = image.astype(np.int16)
    arr[..., 0] += 20
    arr[..., 2] -= 15
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=50)
    return buf.getvalue()


def edited_bytes(path: Path) -> bytes:
    """The degraded copy (:func:`colour_jpeg50_bytes`) of an image file, as encoded JPEG bytes."""
    return colour_jpeg50_bytes(np.asarray(Image.open(path).convert("RGB")))


def jpeg50_colour(image: np.ndarray) -> np.ndarray:
    """The degraded copy of an RGB array, decoded back to RGB pixels (for in-memory pipelines)."""
    return np.asarray(Image.open(io.BytesIO(colour_jpeg50_bytes(image))).convert("RGB"))
