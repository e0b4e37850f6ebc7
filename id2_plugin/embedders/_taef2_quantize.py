"""Producing the int8 TAEF2 encoder: torch -> ONNX export, then ONNX Runtime static int8 quantisation.

The recipe (chosen by ``benchmarks/precision.py``, fidelity first): QDQ format, per-channel symmetric int8
weights with ``reduce_range`` (7-bit weights: AVX2 without VNNI multiplies u8 x s8 with ``vpmaddubsw``,
whose int16 pair sums saturate with full 8-bit weights and cost ~2 points of latent cosine), uint8
activations with min-max ranges from the calibration images. The first convolution (3 input channels, the
image itself), the last one (the latent itself) and the three mid-block ``pool`` branches (GroupNorm) stay
fp32: they are a few percent of the FLOPs and most of the error.

Calibration images are held in memory only; the exported fp32 graph and ONNX Runtime's augmented copy live
in a temporary folder that is removed on return.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._lazy import require, require_onnxruntime

INPUT, OUTPUT = "image", "latent"
#: ONNX metadata keys written into the quantised model
SOURCE_KEY, RECIPE_KEY = "id2.source_sha256", "id2.recipe"
RECIPE = "qdq/per-channel/s8-reduce-range/u8-minmax/fp32-first-last-pool"
FP32_RECIPE = "fp32-export"
_CALIBRATION_BATCH = 4
_OPSET = 17


def nchw_unit(images: np.ndarray) -> np.ndarray:
    """``N x S x S x 3`` uint8 -> ``N x 3 x S x S`` float32 in [-1, 1], the encoder's input convention."""
    x = images.transpose(0, 3, 1, 2).astype(np.float32)
    return np.ascontiguousarray(x / np.float32(127.5) - np.float32(1.0))


def export_fp32(encoder_model: Any, path: Path, input_size: int) -> None:
    """The torch encoder as an fp32 ONNX graph with dynamic batch and spatial size."""
    torch = require("torch")
    example = torch.zeros(1, 3, input_size, input_size)
    dynamic = {INPUT: {0: "n", 2: "h", 3: "w"}, OUTPUT: {0: "n", 2: "lh", 3: "lw"}}
    with torch.inference_mode():
        # The TorchScript exporter: no onnxscript dependency, and this graph is plain convolutions.
        torch.onnx.export(
            encoder_model.float().eval(),
            (example,),
            str(path),
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_axes=dynamic,
            opset_version=_OPSET,
            dynamo=False,
        )


def _kept_fp32(model_path: Path) -> list[str]:
    """Node names left unquantised: first and last convolution, every ``pool`` branch node."""
    onnx = require("onnx")
    nodes = onnx.load(str(model_path)).graph.node
    convs = [n.name for n in nodes if n.op_type == "Conv"]
    return [convs[0], convs[-1], *(n.name for n in nodes if "/pool/" in n.name)]


def _reader(images: Sequence[np.ndarray]) -> Any:
    """A calibration reader over batches of ``images``, with the ``set_range`` that strided calibration uses."""
    quantization = require_onnxruntime("onnxruntime.quantization")
    starts = list(range(0, len(images), _CALIBRATION_BATCH))

    class Reader(quantization.CalibrationDataReader):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            self.set_range(0, len(starts))

        def __len__(self) -> int:
            return len(starts)

        def set_range(self, start_index: int, end_index: int) -> None:
            self._todo: Iterator[int] = iter(starts[start_index:end_index])

        def get_next(self) -> dict[str, np.ndarray] | None:
            s = next(self._todo, None)
            return None if s is None else {INPUT: nchw_unit(np.stack(images[s : s + _CALIBRATION_BATCH]))}

    return Reader()


def quantize_static_int8(fp32_path: Path, out_path: Path, images: Sequence[np.ndarray], source_sha256: str) -> None:
    """Quantise ``fp32_path`` with ``images`` (normalised uint8 squares) as calibration; write ``out_path``."""
    quantization = require_onnxruntime("onnxruntime.quantization")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="id2-quantize-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        quantization.quantize_static(
            str(pre),
            str(Path(tmp) / "int8.onnx"),
            _reader(images),
            quant_format=quantization.QuantFormat.QDQ,
            per_channel=True,
            reduce_range=True,
            activation_type=quantization.QuantType.QUInt8,
            weight_type=quantization.QuantType.QInt8,
            calibrate_method=quantization.CalibrationMethod.MinMax,
            nodes_to_exclude=_kept_fp32(pre),
            # Ranges computed and merged batch by batch (strided min-max, exact for min-max): ORT otherwise keeps
            # every intermediate tensor of every calibration image in memory (~270 MB per image at 256 px).
            extra_options={"ActivationSymmetric": False, "CalibStridedMinMax": 1},
        )
        write_with_metadata(Path(tmp) / "int8.onnx", out_path, {SOURCE_KEY: source_sha256, RECIPE_KEY: RECIPE})


def write_with_metadata(src: Path, out_path: Path, meta: dict[str, str]) -> None:
    """Copy the model to ``out_path`` (atomically) with ``meta`` as ONNX metadata properties."""
    onnx = require("onnx")
    model = onnx.load(str(src))
    onnx.helper.set_model_props(model, meta)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, out_path)
