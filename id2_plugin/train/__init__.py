"""Training the projection W: pairs manifests, pair generators (diffusion and offline proxy), the trainer.

Importing this package is light: torch, diffusers and cv2 load only when a generator or the trainer runs.
"""

from __future__ import annotations

from ..pairs import ManifestError, Pair, load_pairs, manifest_digest, write_pairs
from .cosface import cosface_loss
from .make_pairs import make_diffusion_pairs, make_proxy_pairs, read_prompts
from .train_config import TrainConfig
from .trainer import TrainResult, train_projection

__all__ = [
    "ManifestError",
    "Pair",
    "TrainConfig",
    "TrainResult",
    "cosface_loss",
    "load_pairs",
    "make_diffusion_pairs",
    "make_proxy_pairs",
    "manifest_digest",
    "read_prompts",
    "train_projection",
    "write_pairs",
]
