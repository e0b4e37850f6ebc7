"""TAEF2: the tiny VAE distilled from the FLUX.2 VAE (diffusers ``AutoencoderTiny`` plus a mid-block branch).

The released weights carry a residual branch ``pool`` (Conv1x1 64->256, GroupNorm(4, 256), ReLU, Conv1x1
256->64) on three encoder blocks and three decoder blocks that diffusers' ``AutoencoderTinyBlock`` lacks. We
add it and load strictly: dropping those keys loads "fine" but computes wrong latents.
"""

from __future__ import annotations

import os
from typing import Any

from .._files import sha256_file
from .._lazy import require
from ..errors import ConfigError
from ..models import resolve_model_file
from .base import LatentEncoder

ENCODER_FILE = "taef2_encoder.pth"
DECODER_FILE = "taef2_decoder.pth"
LATENT_CHANNELS = 32
_ENCODER_POOLED = (11, 12, 13)  # diffusers encoder.layers indices == original indices
_DECODER_POOLED = (2, 3, 4)  # original decoder indices 3, 4, 5 (original index 0 is a parameter-free clamp)


def _pooled_block_class() -> type:
    nn = require("torch.nn")

    class PooledTinyBlock(nn.Module):  # type: ignore[misc, name-defined]
        """``AutoencoderTinyBlock`` with TAEF2's residual mid-block branch applied before it."""

        def __init__(self, block: Any, channels: int = 64, hidden: int = 256) -> None:
            super().__init__()
            self.conv = block.conv
            self.skip = block.skip
            self.fuse = block.fuse
            self.pool = nn.Sequential(
                nn.Conv2d(channels, hidden, 1, bias=False),
                nn.GroupNorm(4, hidden),
                nn.ReLU(),
                nn.Conv2d(hidden, channels, 1, bias=False),
            )

        def forward(self, x: Any) -> Any:
            x = x + self.pool(x)
            return self.fuse(self.conv(x) + self.skip(x))

    return PooledTinyBlock


def build_taef2(encoder_path: str | os.PathLike | None, decoder_path: str | os.PathLike | None = None) -> Any:
    """Build a diffusers ``AutoencoderTiny`` with TAEF2's architecture and load weights strictly."""
    require("torch")
    diffusers = require("diffusers")
    model = diffusers.AutoencoderTiny(latent_channels=LATENT_CHANNELS)
    block_cls = _pooled_block_class()
    for i in _ENCODER_POOLED:
        model.encoder.layers[i] = block_cls(model.encoder.layers[i])
    for i in _DECODER_POOLED:
        model.decoder.layers[i] = block_cls(model.decoder.layers[i])
    state: dict[str, Any] = {}
    if encoder_path is not None:
        sd = _load_state_dict(encoder_path)
        state.update({f"encoder.layers.{k}": v for k, v in sd.items()})
    if decoder_path is not None:
        sd = _load_state_dict(decoder_path)
        for k, v in sd.items():
            idx, _, rest = k.partition(".")
            state[f"decoder.layers.{int(idx) - 1 if idx.isdigit() else idx}.{rest}"] = v
    prefixes = tuple(p for p, path in (("encoder.", encoder_path), ("decoder.", decoder_path)) if path is not None)
    expected = {k for k in model.state_dict() if k.startswith(prefixes)}
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise ConfigError(
            f"TAEF2 weights do not match the architecture (missing {sorted(missing)[:5]}, unexpected "
            f"{sorted(unexpected)[:5]}); refusing a partial load that would compute wrong latents"
        )
    try:
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    except RuntimeError as exc:  # right names, wrong shapes: another model's weights
        raise ConfigError(f"TAEF2 weights do not match the architecture: {str(exc).splitlines()[-1].strip()}") from None
    return model.eval()


def _load_state_dict(path: str | os.PathLike) -> dict[str, Any]:
    """A plain tensor state dict from ``path``; anything else (pickle, safetensors, garbage) is a ConfigError."""
    torch = require("torch")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises UnpicklingError, RuntimeError, EOFError, SafetensorError, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "Weights only load failed" in first:  # torch's advice to load it unsafely must not reach users
            first = (
                "not readable as plain tensors (not a torch file, or pickled objects, never unpickled: "
                "they could run code)"
            )
        raise ConfigError(f"{path} is not a TAEF2 weights file (a torch state dict): {first}") from None
    if not isinstance(sd, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        raise ConfigError(
            f"{path} is not a TAEF2 weights file: expected a state dict of tensors, got {type(sd).__name__}"
        )
    return sd


class TAEF2Encoder(LatentEncoder):
    """Real pretrained TAEF2 encoder: 256x256 RGB -> 32x32x32 latent (deterministic, no sampling)."""

    name = "taef2"

    def __init__(self, weights: str | os.PathLike | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        torch = require("torch")
        self.weights_path = resolve_model_file("taef2", ENCODER_FILE, weights)
        self._digest = sha256_file(self.weights_path)
        model = build_taef2(self.weights_path, None)
        self.model = model.encoder.to(self.device, self.dtype).to(memory_format=torch.channels_last)
        self.model.requires_grad_(False)

    @property
    def weights_digest(self) -> str:
        return self._digest

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (LATENT_CHANNELS, self.input_size // 8, self.input_size // 8)

    def _encode_batch(self, x: Any) -> Any:
        return self.model(x)


class TAEF2Decoder:
    """TAEF2 decoder, used by the offline proxy-edit generator (latent noising + decoding)."""

    def __init__(self, weights: str | os.PathLike | None = None, device: str = "auto", dtype: str = "auto") -> None:
        from .base import select_device

        self.device, self.dtype = select_device(device, dtype)
        path = resolve_model_file("taef2", DECODER_FILE, weights)
        self.model = build_taef2(None, path).decoder.to(self.device, self.dtype).eval()
        self.model.requires_grad_(False)

    def decode(self, latents: Any) -> Any:
        """``B x 32 x h x w`` latents -> ``B x 3 x 8h x 8w`` images in [-1, 1]."""
        torch = require("torch")
        with torch.inference_mode():
            return self.model(latents.to(self.device, self.dtype)).clamp(-1, 1)
