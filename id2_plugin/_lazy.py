"""Lazy imports of heavy optional dependencies with an error that names the extra to install."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

from .errors import MissingExtraError

# module -> (extra, pip name) so the message tells the user exactly what to run.
_EXTRAS: dict[str, tuple[str, str]] = {
    "torch": ("torch", "torch"),
    "diffusers": ("torch", "diffusers"),
    "safetensors": ("torch", "safetensors"),
    "faiss": ("faiss", "faiss-cpu"),
    "cv2": ("media", "opencv-contrib-python-headless"),
    "av": ("media", "av"),
    "pdqhash": ("baselines", "pdqhash"),
    "imagehash": ("baselines", "ImageHash"),
    "matplotlib": ("report", "matplotlib"),
    "transformers": ("train", "transformers"),
    "perception": ("perception", "perception"),
    "threatexchange": ("threatexchange", "threatexchange"),
    "fastapi": ("http", "fastapi"),
    "uvicorn": ("http", "uvicorn"),
    "httpx": ("http", "httpx"),
    "fastapi_offline": ("http", "fastapi-offline"),
    "qdrant_client": ("qdrant", "qdrant-client"),
    "ray": ("ray", "ray[data]"),
    "onnxruntime": ("sscd", "onnxruntime"),
    "onnx": ("quantize", "onnx"),
}


def require(module: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` saying which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        root = module.split(".")[0]
        extra, pip_name = _EXTRAS.get(root, (None, root))
        hint = f"pip install 'id2-plugin[{extra}]'" if extra else f"pip install {pip_name}"
        if root == "torch":
            hint = "pip install torch  (CPU: pip install torch==2.13.0), then " + hint
        raise MissingExtraError(
            f"{module!r} is required for this feature but is not importable ({exc}). Install it with: {hint}"
        ) from exc


def require_onnxruntime(module: str = "onnxruntime") -> ModuleType:
    """``module`` (ONNX Runtime or one of its submodules) with ONNX Runtime's telemetry off.

    Official ONNX Runtime builds queue telemetry events (process path, OS, model loading) in
    ``~/.cache/Microsoft/DeveloperTools/.onnxruntime`` to upload when a network is reachable; users holding
    sensitive media expect nothing to leave the machine. ``ORT_DISABLE_TELEMETRY`` is read when ONNX Runtime
    sets itself up at import (an explicit value the user set is kept); ``disable_telemetry_events`` covers
    a host that imported it first.
    """
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    mod = require(module)
    require("onnxruntime").disable_telemetry_events()
    return mod
