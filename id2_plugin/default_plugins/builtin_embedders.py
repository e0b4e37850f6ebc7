"""Built-in signals: the TAEF2 tiny VAE (offline default), diffusers ``AutoencoderKL`` (SD2/SDXL/SD3) and SSCD.

Each factory takes the one :class:`~id2_plugin.specs.EmbedderSpec` assembly builds and refuses, with a
:class:`ConfigError` naming the key, what its model cannot honour.
"""

from __future__ import annotations

from typing import Any

from ..embedders.base import ImageEmbedder, LatentEncoder
from ..embedders.sd_vae import SDVAEEncoder
from ..embedders.sscd import SSCDEmbedder
from ..embedders.taef2_int8 import TAEF2Int8Encoder, TAEF2OnnxFp32Encoder, precision_for, runtime_for
from ..embedders.taesd import TAEF2Encoder
from ..errors import ConfigError
from ..hookspecs import hookimpl
from ..specs import EmbedderSpec


def _encoder_options(spec: EmbedderSpec) -> dict[str, Any]:
    """The :class:`LatentEncoder` constructor's arguments that every VAE takes from the spec."""
    return dict(
        input_size=spec.input_size,
        batch_size=spec.batch_size,
        device=spec.device,
        dtype=spec.dtype,
        resize_policy=spec.resize_policy,
        limits=spec.limits,
    )


def _taef2(spec: EmbedderSpec) -> LatentEncoder:
    options = _encoder_options(spec)
    if precision_for(spec.precision, spec.device, spec.weights) == "int8":
        return TAEF2Int8Encoder(spec.weights, **options)
    if runtime_for(spec.runtime, spec.device, spec.weights) == "onnxruntime":
        return TAEF2OnnxFp32Encoder(spec.weights, **options)
    return TAEF2Encoder(spec.weights, **options)


def _sd_vae(spec: EmbedderSpec) -> LatentEncoder:
    if spec.precision == "int8":  # auto falls back to fp32 (fp16 on CUDA through embedder.dtype)
        raise ConfigError("embedder.precision=int8 is available for taef2 only; use fp32 or auto for sd-vae")
    if spec.runtime == "onnxruntime":  # auto means torch here
        raise ConfigError("embedder.runtime=onnxruntime is available for taef2 only; use torch for sd-vae")
    return SDVAEEncoder(spec.weights, subfolder=spec.subfolder, **_encoder_options(spec))


def _sscd(spec: EmbedderSpec) -> ImageEmbedder:
    # SSCD runs the model file it is given (ONNX or TorchScript) in fp32; embedder.runtime is the VAE's.
    if spec.precision == "int8":
        raise ConfigError("embedder.precision=int8 is available for taef2 only; use fp32 or auto for sscd")
    return SSCDEmbedder(
        spec.weights,
        input_size=spec.input_size,
        batch_size=spec.batch_size,
        device=spec.device,
        resize_policy=spec.resize_policy,
        limits=spec.limits,
    )


@hookimpl
def id2_register_embedders(register: Any) -> None:
    register("taef2", _taef2)
    register("sd-vae", _sd_vae)
    register("sscd", _sscd)
