"""Stable Diffusion VAE encoders (diffusers ``AutoencoderKL``): SD2 by default, SDXL / SD3 configurable.

The latent is ``latent_dist.mean`` (deterministic; the reference ID2 code samples, which makes embeddings
random). No scaling factor is applied, as in the reference code; W absorbs the scale and its metadata
records ``scaling=none``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from .._lazy import require
from ..errors import ModelNotFoundError
from .base import LatentEncoder

#: Default: the SD2 VAE (4 x 32 x 32 = 4096 values at 256 px, as in the paper).
DEFAULT_SD_VAE = "stabilityai/stable-diffusion-2-1-base"
KNOWN_VAES = {
    "sd2": ("stabilityai/stable-diffusion-2-1-base", "vae"),
    "sdxl": ("stabilityai/sdxl-vae", None),
    "sd3": ("stabilityai/stable-diffusion-3-medium-diffusers", "vae"),
}


class SDVAEEncoder(LatentEncoder):
    """Encoder of a diffusers ``AutoencoderKL``, from a local folder, a hub id, or a model object."""

    name = "sd-vae"

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        *,
        subfolder: str | None = None,
        model: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        torch = require("torch")
        diffusers = require("diffusers")
        if model is None:
            source = str(weights or DEFAULT_SD_VAE)
            if source in KNOWN_VAES:
                source, subfolder = KNOWN_VAES[source]
            elif weights is None:
                subfolder = subfolder or "vae"
            local = Path(source).expanduser()
            if (
                local.is_dir()
                and subfolder is None
                and not (local / "config.json").is_file()
                and (local / "vae").is_dir()
            ):
                subfolder = "vae"
            try:
                model = diffusers.AutoencoderKL.from_pretrained(source, subfolder=subfolder)
            except Exception as exc:  # OSError offline, EnvironmentError for missing files, HTTP errors
                raise ModelNotFoundError(
                    f"cannot load AutoencoderKL from {source!r} (subfolder={subfolder!r}): {exc}. "
                    "Pass a local diffusers folder as embedder.weights."
                ) from None
            self.source = source
        else:
            self.source = f"<{type(model).__name__}>"
        self.model = model.to(self.device, self.dtype).eval()
        self.model.requires_grad_(False)
        self._channels = int(self.model.config.latent_channels)
        blocks = len(self.model.config.block_out_channels)
        self._factor = 2 ** (blocks - 1)
        h = hashlib.sha256()
        for k, v in sorted(self.model.state_dict().items()):
            if k.startswith(("encoder.", "quant_conv.")):
                h.update(k.encode())
                h.update(v.detach().float().cpu().numpy().tobytes())
        self._digest = h.hexdigest()
        del torch

    @property
    def weights_digest(self) -> str:
        return self._digest

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        side = self.input_size // self._factor
        return (self._channels, side, side)

    def _encode_batch(self, x: Any) -> Any:
        return self.model.encode(x).latent_dist.mean
