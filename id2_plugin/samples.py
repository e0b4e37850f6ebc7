"""Deterministic synthetic pictures: what the conformance checks and host examples embed when no file is at hand."""

from __future__ import annotations

import numpy as np


def synthetic_images(n: int = 3, size: int = 256) -> list[np.ndarray]:
    """``n`` deterministic, clearly different ``size x size`` RGB uint8 pictures (waves, rings, checkers)."""
    if n < 1 or size < 8:
        raise ValueError(f"synthetic_images needs n >= 1 and size >= 8, got n={n}, size={size}")
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    out = []
    for i in range(n):
        r = 0.5 + 0.5 * np.sin(2 * np.pi * (x * (i + 1) + 1.7 * i))
        g = 0.5 + 0.5 * np.cos(2 * np.pi * np.hypot(x - 0.5, y - 0.5) * (3 + 2 * i))
        checker = (np.floor(x * (4 + i)) + np.floor(y * (4 + i))) % 2
        img = np.stack([r, g, 0.3 + 0.4 * checker], axis=-1)
        out.append((img * 255 + 0.5).astype(np.uint8))
    return out


__all__ = ["synthetic_images"]
