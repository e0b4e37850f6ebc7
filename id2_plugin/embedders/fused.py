"""The ``fused`` embedder: several signals in one vector whose cosine is the weighted mean of theirs.

Each signal's L2-normalised vector is scaled by ``sqrt(weight)`` and the pieces are concatenated; with
weights summing to 1 the result is unit-norm and ``cos(fused_a, fused_b) = sum_i weight_i * cos_i``.
So every store, index type, adapter, threshold calibration and host signal keeps working on the fused
vector unchanged, and each signal's own cosine can be read back from its slice (:attr:`signals`).

Weights come from a *fusion fit* (``id2-plugin fit-fusion``): a small JSON file with the weights and their
provenance. A per-signal affine score normalisation (z-scores) would change only the weights' ratio and an
additive constant, so weights are all a fit needs.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._jsonfile import read_json_object, write_json_atomic
from ..errors import ConfigError
from ..media import MediaLike, MediaLimits, ResizePolicy, to_rgb_array
from .base import Embedder, ImageEmbedder


@dataclass(frozen=True)
class FusionFit:
    """Per-signal weights (normalised to sum 1) and where they came from."""

    weights: dict[str, float]
    provenance: dict[str, Any] = field(default_factory=dict)
    source: str | None = None

    def __post_init__(self) -> None:
        if not self.weights or any(not math.isfinite(w) or w < 0 for w in self.weights.values()):
            raise ConfigError(f"fusion weights must be non-negative numbers, got {self.weights}")
        total = sum(self.weights.values())
        if total <= 0:
            raise ConfigError("fusion weights sum to zero")
        object.__setattr__(self, "weights", {k: float(v) / total for k, v in self.weights.items()})

    @classmethod
    def load(cls, path: str | os.PathLike) -> FusionFit:
        doc = read_json_object(path, "fusion fit")
        if not isinstance(doc.get("weights"), dict):
            raise ConfigError(f"fusion fit {path} has no 'weights' mapping")
        return cls({str(k): float(v) for k, v in doc["weights"].items()}, dict(doc.get("provenance") or {}), str(path))

    def save(self, path: str | os.PathLike) -> Path:
        return write_json_atomic(path, {"weights": self.weights, "provenance": self.provenance})


class FusedEmbedder(ImageEmbedder):
    """Concatenation of ``parts`` (name -> embedder), each scaled by the square root of its fitted weight.

    Media are normalised once, to a square of the largest part's input size; each part resizes from it.
    """

    name = "fused"

    def __init__(
        self,
        parts: Sequence[ImageEmbedder],
        fit: FusionFit,
        *,
        resize_policy: ResizePolicy = "squash",
        limits: MediaLimits | None = None,
    ) -> None:
        names = [p.name for p in parts]
        if len(set(names)) != len(names) or len(parts) < 2:
            raise ConfigError(f"a fused embedder needs at least two distinct signals, got {names}")
        missing = [n for n in names if n not in fit.weights]
        if missing:
            raise ConfigError(
                f"the fusion fit {fit.source or ''} has no weight for {', '.join(missing)} "
                f"(it has {', '.join(fit.weights)}); run `id2-plugin fit-fusion` for these signals, or give "
                "each signal's weight in embedder.fusion"
            )
        self.parts = list(parts)
        self.fit = fit
        total = sum(fit.weights[n] for n in names)
        self.weights = {n: fit.weights[n] / total for n in names}
        self.resize_policy: ResizePolicy = resize_policy
        self.limits = limits or MediaLimits()
        self.batch_size = min(p.batch_size for p in parts)

    @property
    def input_size(self) -> int:
        return max(p.input_size for p in self.parts)

    @property
    def dim(self) -> int:
        return sum(p.dim for p in self.parts)

    @property
    def identity(self) -> str:
        inner = ";".join(f"{p.name}={self.weights[p.name]:.4f}:{p.identity}" for p in self.parts)
        return f"fused[{inner}]"

    @property
    def signals(self) -> dict[str, tuple[int, int, float]]:
        out, start = {}, 0
        for p in self.parts:
            out[p.name] = (start, start + p.dim, self.weights[p.name])
            start += p.dim
        return out

    @property
    def projection_id(self) -> str | None:
        ids = [p.projection_id for p in self.parts if p.projection_id]
        return ids[0] if len(ids) == 1 else (";".join(ids) or None)

    def latent_part(self) -> Embedder | None:
        return next((q for p in self.parts if (q := p.latent_part()) is not None), None)

    def part(self, name: str) -> ImageEmbedder | None:
        return next((p for p in self.parts if p.name == name), None)

    def normalise(self, source: MediaLike) -> np.ndarray:
        size = self.input_size
        return to_rgb_array(source, (size, size), policy=self.resize_policy, limits=self.limits)

    def combine(self, vectors: Sequence[np.ndarray]) -> np.ndarray:
        """Per-part L2-normalised vectors (in part order) -> fused vectors."""
        return np.concatenate(
            [
                np.asarray(v, np.float32) * np.float32(math.sqrt(self.weights[p.name]))
                for p, v in zip(self.parts, vectors)
            ],
            axis=1,
        )

    def embed_arrays(self, images: np.ndarray) -> np.ndarray:
        return self.combine([p.embed_arrays(images) for p in self.parts])

    def embed_windows(self, windows: np.ndarray, whole: np.ndarray) -> np.ndarray:
        """Only the window signals (SSCD) see the crops; every other signal keeps its whole-image slice,
        which costs nothing and measured as well as re-embedding them (benchmarks/query_windows.py)."""
        chosen = [p for p in self.parts if p.window_signal] or self.parts
        rows = np.broadcast_to(np.atleast_2d(np.asarray(whole, np.float32)), (len(windows), self.dim))
        parts = []
        for p, (a, b, w) in zip(self.parts, self.signals.values()):
            own = rows[:, a:b] / np.float32(math.sqrt(w) or 1.0)  # the signal's unit vector from its scaled slice
            parts.append(p.embed_windows(windows, own) if p in chosen else own)
        return self.combine(parts)
