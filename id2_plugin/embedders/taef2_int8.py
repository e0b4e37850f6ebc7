"""The int8 TAEF2 encoder (``embedder.precision: int8``), run by ONNX Runtime on the CPU.

The quantised model is produced on the user's machine by ``id2-plugin quantize`` (:func:`quantize_taef2`)
from the fp32 weights and the user's own calibration photos; it is never shipped. It is found like the
other models: ``embedder.weights`` (a folder, or the ``.onnx`` file itself), then ``$ID2_MODELS_DIR/taef2/``,
then ``../shared/models/taef2/``; never downloaded.

Identity: the fp32 encoder's identity plus ``/int8:<digest of the int8 file>``. Its vectors are close to
fp32 but not equal (see ``benchmarks/results/precision.md``), so a store, a latent cache or a calibrated
threshold made at one precision is refused at the other, with a message naming ``embedder.precision``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._files import sha256_file
from .._lazy import require
from ..errors import ConfigError, ModelNotFoundError
from ..media import MediaLike, to_rgb_array
from ..models import resolve_model_file
from . import _taef2_quantize as q
from .base import LatentEncoder
from .taesd import ENCODER_FILE, LATENT_CHANNELS

INT8_FILE = "taef2_encoder_int8.onnx"
PRECISIONS = ("fp32", "int8", "auto")
_HOW_TO_MAKE_ONE = (
    "make it with `id2-plugin quantize --out DIR PHOTOS...` and set ID2_MODELS_DIR=DIR "
    "(or embedder.weights=DIR/taef2), or use embedder.precision=fp32"
)


def resolve_int8_model(weights: str | os.PathLike | None = None) -> Path:
    """The int8 model: an ``.onnx`` ``weights`` file, else :data:`INT8_FILE` beside/in ``weights``, else the model dirs."""
    configured: Path | None = Path(weights).expanduser() if weights else None
    if configured is not None and configured.is_file() and configured.suffix != ".onnx":
        configured = configured.parent  # the fp32 .pth: its int8 sibling lives beside it
    try:
        return resolve_model_file("taef2", INT8_FILE, configured, allow_download=False)
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(f"{exc}; the int8 TAEF2 encoder is made locally: {_HOW_TO_MAKE_ONE}") from None


def int8_available(weights: str | os.PathLike | None = None) -> bool:
    try:
        resolve_int8_model(weights)
    except ModelNotFoundError:
        return False
    return True


class TAEF2Int8Encoder(LatentEncoder):
    """TAEF2's encoder quantised to int8 (ONNX Runtime, CPU): same input, latent shape and API as fp32."""

    name = "taef2"
    precision = "int8"

    def __init__(self, weights: str | os.PathLike | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model_path = resolve_int8_model(weights)
        self._int8_digest = sha256_file(self.model_path)
        self._session = _cpu_session(self.model_path)
        meta = self._session.get_modelmeta().custom_metadata_map
        if q.SOURCE_KEY not in meta:
            raise ConfigError(f"{self.model_path} was not written by `id2-plugin quantize` (no {q.SOURCE_KEY} metadata); remake it")
        self._source_digest = meta[q.SOURCE_KEY]

    def _select_device(self, device: str, dtype: str) -> tuple[Any, Any]:
        if device not in ("auto", "cpu"):
            raise ConfigError(f"embedder.precision=int8 runs on the CPU only, not embedder.device={device!r}; use fp32 (fp16 on CUDA)")
        return "cpu", "int8"

    @property
    def weights_digest(self) -> str:
        """sha256 of the fp32 weights the int8 model was quantised from (recorded in its metadata)."""
        return self._source_digest

    @property
    def identity(self) -> str:
        return f"{super().identity}/int8:{self._int8_digest[:16]}"

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (LATENT_CHANNELS, self.input_size // 8, self.input_size // 8)

    def _encode_chunk(self, chunk: np.ndarray) -> np.ndarray:
        return self._encode_batch(q.nchw_unit(chunk))

    def _encode_batch(self, x: Any) -> Any:
        return np.asarray(self._session.run(None, {q.INPUT: x})[0], np.float32)


def _cpu_session(path: Path) -> Any:
    ort = require("onnxruntime")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = os.cpu_count() or 1
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # truncated file, not ONNX, unsupported opset
        raise ConfigError(f"cannot load the int8 TAEF2 model {path}: {exc}; remake it with `id2-plugin quantize`") from None


def precision_for(precision: str, device: str, weights: str | os.PathLike | None) -> str:
    """``auto`` -> ``int8`` on the CPU when the int8 model resolves, else ``fp32`` (fp16 on CUDA via dtype auto)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"embedder.precision={precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device not in ("auto", "cpu") or (device == "auto" and require("torch").cuda.is_available()):
        return "fp32"
    return "int8" if int8_available(weights) else "fp32"


def calibration_images(paths: Sequence[MediaLike], count: int, input_size: int) -> list[np.ndarray]:
    """``count`` images spread evenly over ``paths`` (sorted order kept), normalised like queries (squash)."""
    if not paths:
        raise ConfigError("quantize needs calibration photos (the kind of images you will index)")
    step = max(1, len(paths) // count)
    return [to_rgb_array(p, (input_size, input_size)) for p in list(paths)[::step][:count]]


def quantize_taef2(out_dir: str | os.PathLike, calibration: Sequence[MediaLike], *, weights: str | os.PathLike | None = None,
                   count: int = 100, input_size: int = 256) -> Path:
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
