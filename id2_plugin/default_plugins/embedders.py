"""Built-in signals: the TAEF2 tiny VAE (offline default), diffusers ``AutoencoderKL`` (SD2/SDXL/SD3) and SSCD."""

from __future__ import annotations

from typing import Any


from ..hookspecs import hookimpl


def _taef2(**kwargs: Any) -> Any:
    from ..embedders.taesd import TAEF2Encoder

    return TAEF2Encoder(**kwargs)


def _sd_vae(**kwargs: Any) -> Any:
    from ..embedders.sd_vae import SDVAEEncoder

    return SDVAEEncoder(**kwargs)


def _sscd(**kwargs: Any) -> Any:
    from ..embedders.sscd import SSCDEmbedder

    return SSCDEmbedder(**kwargs)


@hookimpl
def id2_register_embedders(register: Any) -> None:
    register("taef2", _taef2)
    register("sd-vae", _sd_vae)
    register("sscd", _sscd)
