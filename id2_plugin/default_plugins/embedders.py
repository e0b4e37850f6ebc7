"""Built-in signals: the TAEF2 tiny VAE (offline default), diffusers ``AutoencoderKL`` (SD2/SDXL/SD3) and SSCD."""

from __future__ import annotations

from typing import Any

from ..hookspecs import hookimpl


def _taef2(precision: str = "fp32", runtime: str = "auto", **kwargs: Any) -> Any:
    from ..embedders.taef2_int8 import TAEF2Int8Encoder, TAEF2OnnxFp32Encoder, precision_for, runtime_for
    from ..embedders.taesd import TAEF2Encoder

    device, weights = kwargs.get("device", "auto"), kwargs.get("weights")
    if precision_for(precision, device, weights) == "int8":
        return TAEF2Int8Encoder(**kwargs)
    return (
        TAEF2OnnxFp32Encoder(**kwargs)
        if runtime_for(runtime, device, weights) == "onnxruntime"
        else TAEF2Encoder(**kwargs)
    )


def _sd_vae(precision: str = "fp32", runtime: str = "auto", **kwargs: Any) -> Any:
    from ..embedders.sd_vae import SDVAEEncoder
    from ..errors import ConfigError

    if precision == "int8":  # auto falls back to fp32 (fp16 on CUDA through embedder.dtype)
        raise ConfigError("embedder.precision=int8 is available for taef2 only; use fp32 or auto for sd-vae")
    if runtime == "onnxruntime":  # auto means torch here
        raise ConfigError("embedder.runtime=onnxruntime is available for taef2 only; use torch for sd-vae")
    return SDVAEEncoder(**kwargs)


def _sscd(**kwargs: Any) -> Any:
    from ..embedders.sscd import SSCDEmbedder

    return SSCDEmbedder(**kwargs)


@hookimpl
def id2_register_embedders(register: Any) -> None:
    register("taef2", _taef2)
    register("sd-vae", _sd_vae)
    register("sscd", _sscd)
