"""id2-plugin: origin identification for images edited by text-guided image-to-image diffusion models.

Method: Wang et al., "Origin Identification for Text-Guided Image-to-Image Diffusion Models", ICML 2025 —
embed with a diffusion VAE encoder, project with a learned linear W, L2-normalise, cosine search.

Importing this package never imports torch or faiss; they load when a model or store is first used.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .assembly import build_embedder, open_store
from .calibrate import Calibration, calibrate_threshold
from .calibration_run import CalibrationRun, run_calibration
from .config import Config, load_config
from .embedders.base import Embedder, ImageEmbedder, LatentEncoder, Projection
from .embedders.fused import FusedEmbedder, FusionFit
from .errors import (
    ConfigError,
    Id2Error,
    IncompatibleStoreError,
    MediaError,
    MissingExtraError,
    ModelNotFoundError,
    StoreError,
)
from .evaluate import evaluate_methods
from .evaluation_run import EvaluationRun, run_evaluation
from .explain import explain_match, explain_pair, render_explanation
from .explanation import Explanation, LocalMatches
from .hookspecs import hookimpl
from .identify_context import IdentifyContext
from .media import MediaLimits, load_image, to_rgb_array
from .metrics import Metrics, compute_metrics
from .pipeline import IngestResult, Pipeline, Upload
from .plugins import get_plugin_manager
from .ray_executor import RayExecutor
from .specs import EmbedderSpec, StoreSpec
from .stores.base import ReferenceStore, StoreBackend
from .types import AddResult, Match, OriginReport, ReferenceRecord, StoreInfo
from .video import VideoError, VideoReport, iter_frames, scan_video

try:
    __version__ = version("id2-plugin")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"


__all__ = [
    "AddResult",
    "Calibration",
    "CalibrationRun",
    "Config",
    "ConfigError",
    "Embedder",
    "EmbedderSpec",
    "EvaluationRun",
    "Explanation",
    "FusedEmbedder",
    "FusionFit",
    "Id2Error",
    "IdentifyContext",
    "ImageEmbedder",
    "IncompatibleStoreError",
    "IngestResult",
    "LatentEncoder",
    "LocalMatches",
    "Match",
    "MediaError",
    "MediaLimits",
    "Metrics",
    "MissingExtraError",
    "ModelNotFoundError",
    "OriginReport",
    "Pipeline",
    "Projection",
    "RayExecutor",
    "ReferenceRecord",
    "ReferenceStore",
    "StoreBackend",
    "StoreError",
    "StoreInfo",
    "StoreSpec",
    "Upload",
    "VideoError",
    "VideoReport",
    "__version__",
    "build_embedder",
    "calibrate_threshold",
    "compute_metrics",
    "evaluate_methods",
    "explain_match",
    "explain_pair",
    "get_plugin_manager",
    "hookimpl",
    "iter_frames",
    "load_config",
    "load_image",
    "open_store",
    "render_explanation",
    "run_calibration",
    "run_evaluation",
    "scan_video",
    "to_rgb_array",
]
