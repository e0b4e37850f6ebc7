"""TAEF2 in ONNX Runtime on the CPU: int8 (``embedder.precision: int8``) or fp32 (``embedder.runtime: onnxruntime``).

Both models are produced on the user's machine by ``id2-plugin quantize`` from the fp32 weights: the int8 one
(:func:`quantize_taef2`) calibrated on the user's own photos, the fp32 one (:func:`export_taef2_fp32`) exported
as is, weights only; neither is shipped. They are found like the other models: ``embedder.weights`` (a folder,
or the ``.onnx`` file itself), then ``$ID2_MODELS_DIR/taef2/``, then ``../shared/models/taef2/``; never
downloaded.

Identity: the int8 encoder's is the fp32 identity plus ``/int8:<digest of the int8 file>``. Its vectors are
close to fp32 but not equal (see ``benchmarks/results/precision.md``), so a store, a latent cache or a
calibrated threshold made at one precision is refused at the other, with a message naming
``embedder.precision``. The fp32 graph computes torch's vectors to float rounding (cosine >= 0.9999 per image,
tested), so it keeps the torch identity: stores built by either runtime serve both.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._files import sha256_file
from .._lazy import require, require_onnxruntime
from ..errors import ConfigError, ModelNotFoundError
from ..media import MediaLike, to_rgb_array
from ..models import resolve_model_file
from . import _taef2_quantize as q
from .base import LatentEncoder
from .taesd import ENCODER_FILE, LATENT_CHANNELS

INT8_FILE = "taef2_encoder_int8.onnx"
FP32_FILE = "taef2_encoder_fp32.onnx"
PRECISIONS = ("fp32", "int8", "auto")
RUNTIMES = ("torch", "onnxruntime", "auto")
_HOW_TO_MAKE_ONE = {
    INT8_FILE: "make it with `id2-plugin quantize --out DIR PHOTOS...` and set ID2_MODELS_DIR=DIR "
    "(or embedder.weights=DIR/taef2), or use embedder.precision=fp32",
    FP32_FILE: "make it with `id2-plugin quantize --precision fp32 --out DIR` and set ID2_MODELS_DIR=DIR "
    "(or embedder.weights=DIR/taef2), or use embedder.runtime=torch",
}


def resolve_onnx_model(weights: str | os.PathLike | None = None, file: str = INT8_FILE) -> Path:
    """An ONNX TAEF2 model: an ``.onnx`` ``weights`` file, else ``file`` beside/in ``weights``, else the model dirs."""
    configured: Path | None = Path(weights).expanduser() if weights else None
    if configured is not None and configured.is_file() and configured.suffix != ".onnx":
        configured = configured.parent  # the fp32 .pth: its ONNX siblings live beside it
    try:
        return resolve_model_file("taef2", file, configured, allow_download=False)
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(f"{exc}; the ONNX TAEF2 encoders are made locally: {_HOW_TO_MAKE_ONE[file]}") from None


def resolve_int8_model(weights: str | os.PathLike | None = None) -> Path:
    """The int8 model (see :func:`resolve_onnx_model`)."""
    return resolve_onnx_model(weights, INT8_FILE)


def onnx_available(weights: str | os.PathLike | None = None, file: str = INT8_FILE) -> bool:
    try:
        resolve_onnx_model(weights, file)
    except ModelNotFoundError:
        return False
    return True


def int8_available(weights: str | os.PathLike | None = None) -> bool:
    return onnx_available(weights, INT8_FILE)


class _TAEF2OnnxEncoder(LatentEncoder):
    """TAEF2's encoder as an ONNX graph written by ``id2-plugin quantize``, run by ONNX Runtime on the CPU."""

    name = "taef2"
    precision = "fp32"
    model_file = FP32_FILE

    def __init__(self, weights: str | os.PathLike | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model_path = resolve_onnx_model(weights, self.model_file)
        self._file_digest = sha256_file(self.model_path)
        self._session = _cpu_session(self.model_path)
        meta = self._session.get_modelmeta().custom_metadata_map
        if q.SOURCE_KEY not in meta:
            raise ConfigError(
                f"{self.model_path} was not written by `id2-plugin quantize` (no {q.SOURCE_KEY} metadata); remake it"
            )
        self._source_digest = meta[q.SOURCE_KEY]

    def _select_device(self, device: str, dtype: str) -> tuple[Any, Any]:
        if device not in ("auto", "cpu"):
            raise ConfigError(
                f"embedder.precision={self.precision} in ONNX Runtime runs on the CPU only, not "
                f"embedder.device={device!r}; use embedder.runtime=torch (fp16 on CUDA)"
            )
        return "cpu", self.precision

    @property
    def weights_digest(self) -> str:
        """sha256 of the fp32 weights the ONNX model was made from (recorded in its metadata)."""
        return self._source_digest

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (LATENT_CHANNELS, self.input_size // 8, self.input_size // 8)

    def _encode_chunk(self, chunk: np.ndarray) -> np.ndarray:
        return self._encode_batch(q.nchw_unit(chunk))

    def _encode_batch(self, x: Any) -> Any:
        return np.asarray(self._session.run(None, {q.INPUT: x})[0], np.float32)


class TAEF2OnnxFp32Encoder(_TAEF2OnnxEncoder):
    """The fp32 TAEF2 encoder in ONNX Runtime (``embedder.runtime: onnxruntime``): torch's vectors, faster on a CPU."""


class TAEF2Int8Encoder(_TAEF2OnnxEncoder):
    """TAEF2's encoder quantised to int8 (ONNX Runtime, CPU): same input, latent shape and API as fp32."""

    precision = "int8"
    model_file = INT8_FILE

    @property
    def identity(self) -> str:
        return f"{super().identity}/int8:{self._file_digest[:16]}"


def _cpu_session(path: Path) -> Any:
    ort = require_onnxruntime()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = os.cpu_count() or 1
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # truncated file, not ONNX, unsupported opset
        raise ConfigError(
            f"cannot load the ONNX TAEF2 model {path}: {exc}; remake it with `id2-plugin quantize`"
        ) from None


def precision_for(precision: str, device: str, weights: str | os.PathLike | None) -> str:
    """``auto`` -> ``int8`` on the CPU when the int8 model resolves, else ``fp32`` (fp16 on CUDA via dtype auto)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"embedder.precision={precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    return "int8" if _cpu_only(device) and int8_available(weights) else "fp32"


def _cpu_only(device: str) -> bool:
    return device == "cpu" or (device == "auto" and not require("torch").cuda.is_available())


def runtime_for(runtime: str, device: str, weights: str | os.PathLike | None) -> str:
    """``auto`` -> ``onnxruntime`` on the CPU when the exported fp32 graph resolves (and ONNX Runtime is
    installed), else ``torch``: both give the same vectors under the same identity, ONNX Runtime faster."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"embedder.runtime={runtime!r} is not one of {', '.join(RUNTIMES)}")
    if runtime != "auto":
        return runtime
    if not _cpu_only(device) or importlib.util.find_spec("onnxruntime") is None:
        return "torch"
    return "onnxruntime" if onnx_available(weights, FP32_FILE) else "torch"


def calibration_images(paths: Sequence[MediaLike], count: int, input_size: int) -> list[np.ndarray]:
    """``count`` images spread evenly over ``paths`` (sorted order kept), normalised like queries (squash)."""
    if not paths:
        raise ConfigError("quantize needs calibration photos (the kind of images you will index)")
    step = max(1, len(paths) // count)
    return [to_rgb_array(p, (input_size, input_size)) for p in list(paths)[::step][:count]]


def export_taef2_fp32(
    out_dir: str | os.PathLike, *, weights: str | os.PathLike | None = None, input_size: int = 256
) -> Path:
    """Write ``out_dir/taef2/taef2_encoder_fp32.onnx``: the fp32 weights as an ONNX graph (no calibration)."""
    from .taesd import build_taef2

    source = resolve_model_file("taef2", ENCODER_FILE, weights)
    out = Path(out_dir).expanduser() / "taef2" / FP32_FILE
    with tempfile.TemporaryDirectory(prefix="id2-export-") as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        q.export_fp32(build_taef2(source, None).encoder, fp32, input_size)
        q.write_with_metadata(fp32, out, {q.SOURCE_KEY: sha256_file(source), q.RECIPE_KEY: q.FP32_RECIPE})
    return out


def quantize_taef2(
    out_dir: str | os.PathLike,
    calibration: Sequence[MediaLike],
    *,
    weights: str | os.PathLike | None = None,
    count: int = 100,
    input_size: int = 256,
) -> Path:
    """Write ``out_dir/taef2/taef2_encoder_int8.onnx`` from the fp32 TAEF2 weights and calibration photos."""
    from .taesd import build_taef2

    source = resolve_model_file("taef2", ENCODER_FILE, weights)
    images = calibration_images(calibration, count, input_size)
    out = Path(out_dir).expanduser() / "taef2" / INT8_FILE
    with tempfile.TemporaryDirectory(prefix="id2-export-") as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        q.export_fp32(build_taef2(source, None).encoder, fp32, input_size)
        q.quantize_static_int8(fp32, out, images, sha256_file(source))
    return out
