"""Building the parts of a pipeline from configuration: embedders and their signals, W, the fusion fit, the
decision model and its threshold, and the store. The registry (:mod:`id2_plugin.plugins`) says what can be
built; this module builds it from the config's frozen sections, once, for every front end."""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._lazy import require_onnxruntime
from .config import EmbedderConfig, MatchConfig, StoreConfig
from .decision import DecisionModel
from .embedders.base import Embedder, ImageEmbedder, LatentEncoder, Projection
from .embedders.fused import FusedEmbedder, FusionFit
from .embedders.sscd import resolve_sscd_model
from .errors import ConfigError, Id2Error
from .media import MediaLimits
from .plugins import embedder_factories, store_factories
from .specs import EmbedderSpec, StoreSpec

if TYPE_CHECKING:
    from .stores.base import ReferenceStore

log = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def default_projection_path(encoder_name: str) -> Path | None:
    """The W shipped with the package for ``encoder_name``, if any."""
    p = WEIGHTS_DIR / f"{encoder_name}_w.safetensors"
    return p if p.is_file() else None


#: embedder.name values that are not one registered encoder but a choice or a combination of signals
COMPOSITE_NAMES = ("auto", "fused")
SSCD = "sscd"
#: the signal name of the VAE encoder (``embedder.vae``) with its W in ``embedder.signals``
LATENT_SIGNAL = "id2"


def embedder_spec(
    name: str, cfg: EmbedderConfig, limits: MediaLimits | None = None, *, fused: bool = False
) -> EmbedderSpec:
    """The spec the factory registered as ``name`` builds from. The section's model keys (``weights``,
    ``precision``, ``runtime``, ``subfolder``) belong to the signal it names, or in a ``fused`` embedder to
    its VAE; there SSCD has ``sscd_weights`` and any other signal its factory's defaults."""
    spec = EmbedderSpec(
        name=name,
        input_size=cfg.sscd_input_size if name == SSCD else cfg.input_size,
        batch_size=cfg.model_batch_size,
        device=cfg.device,
        dtype=cfg.dtype,
        resize_policy=cfg.resize_policy,  # type: ignore[arg-type]
        limits=limits or MediaLimits(),
    )
    if fused and name != cfg.vae:
        return replace(spec, weights=cfg.sscd_weights) if name == SSCD else spec
    return replace(spec, weights=cfg.weights, precision=cfg.precision, runtime=cfg.runtime, subfolder=cfg.subfolder)


def build_registered(spec: EmbedderSpec) -> LatentEncoder | ImageEmbedder:
    """What the factory registered as ``spec.name`` builds: a latent encoder or a whole image embedder."""
    factories = embedder_factories()
    if spec.name not in factories:
        choices = ", ".join([*COMPOSITE_NAMES, *sorted(factories)])
        raise ConfigError(f"the embedder {spec.name!r} is not registered; available: {choices}")
    built = factories[spec.name](spec)
    if not isinstance(built, (LatentEncoder, ImageEmbedder)):
        raise ConfigError(
            f"the factory registered as embedder {spec.name!r} returned {type(built).__name__}, "
            "not an id2_plugin.LatentEncoder or ImageEmbedder"
        )
    return built


def build_encoder(cfg: EmbedderConfig, limits: MediaLimits | None = None) -> LatentEncoder:
    """The latent encoder (for ``auto``/``fused``: the one named by ``embedder.vae``)."""
    name = cfg.vae if cfg.name in COMPOSITE_NAMES else cfg.name
    built = build_registered(embedder_spec(name, cfg, limits))
    if not isinstance(built, LatentEncoder):
        raise ConfigError(f"embedder {name!r} is a whole image embedder, not a latent encoder (a VAE)")
    return built


def load_projection(spec: str, encoder_name: str) -> Projection | None:
    """``default`` -> the shipped W for the encoder (None if there is none), ``none`` -> None, else a path."""
    if spec == "none":
        return None
    if spec == "default":
        p = default_projection_path(encoder_name)
        return Projection.load(p) if p else None
    return Projection.load(spec)


def build_embedder(
    cfg: EmbedderConfig, limits: MediaLimits | None = None, *, in_memory_only: bool = False
) -> ImageEmbedder:
    """The embedder the ``embedder`` config section names (see :func:`resolve_embedder_name` for ``auto``).

    An embedder whose vectors contain a raw VAE latent (no W) is refused unless ``embedder.allow_raw_latent``
    is set, or ``in_memory_only`` promises its vectors are never stored, hashed or returned (evaluate).
    """
    embedder = _build_embedder(cfg, limits)
    if not in_memory_only and not cfg.allow_raw_latent:
        refuse_raw_latent(embedder)
    return embedder


def refuse_raw_latent(embedder: ImageEmbedder) -> None:
    """Raise :class:`ConfigError` when ``embedder``'s vectors contain a raw VAE latent (decodable into the image)."""
    part = embedder.latent_part()
    if part is not None and part.projection is None:
        raise ConfigError(
            f"embedder {embedder.identity} has no W (embedder.projection is 'none', or no W is shipped for "
            f"{part.encoder.name}): its vectors are raw VAE latents, which decode back into near-copies of the "
            "images. Give a W (embedder.projection: PATH), or accept storing them with "
            "embedder.allow_raw_latent: true (--set embedder.allow_raw_latent=true)"
        )


def _build_embedder(cfg: EmbedderConfig, limits: MediaLimits | None) -> ImageEmbedder:
    name = resolve_embedder_name(cfg)
    if name == "fused":
        return FusedEmbedder(
            build_signals(cfg, limits), load_fusion(cfg.fusion), resize_policy=cfg.resize_policy, limits=limits
        )  # type: ignore[arg-type]
    built = build_registered(embedder_spec(name, cfg, limits))
    return _with_projection(built, cfg)


def _with_projection(built: LatentEncoder | ImageEmbedder, cfg: EmbedderConfig) -> ImageEmbedder:
    """A latent encoder becomes the ``id2`` signal with its W; a whole image embedder (like sscd) is one as is."""
    if isinstance(built, ImageEmbedder):
        return built
    return Embedder(built, load_projection(cfg.projection, built.name))


def build_signals(cfg: EmbedderConfig, limits: MediaLimits | None = None) -> list[ImageEmbedder]:
    """The signals a fused embedder combines, in ``embedder.signals`` order: ``id2`` is the VAE encoder
    (``embedder.vae``) with its W; any other name is a registered whole image embedder (``sscd``, a plugin's)."""
    return [_build_signal(name, cfg, limits) for name in cfg.signals]


def _build_signal(name: str, cfg: EmbedderConfig, limits: MediaLimits | None) -> ImageEmbedder:
    if name == LATENT_SIGNAL:
        return _with_projection(build_registered(embedder_spec(cfg.vae, cfg, limits, fused=True)), cfg)
    built = build_registered(embedder_spec(name, cfg, limits, fused=True))
    if not isinstance(built, ImageEmbedder):
        raise ConfigError(
            f"embedder.signals: {name!r} is a latent encoder; it joins fusion as the {LATENT_SIGNAL} signal "
            f"(embedder.vae: {name})"
        )
    if built.name != name:  # the fusion weights and the matches' per-signal cosines are keyed by this name
        raise ConfigError(f"the signal registered as {name!r} calls itself {built.name!r}; its name must match")
    return built


def sscd_available(cfg: EmbedderConfig) -> str | None:
    """None when an SSCD model and ONNX Runtime resolve for ``cfg``, else the reason they do not."""
    try:
        require_onnxruntime()
        resolve_sscd_model(cfg.sscd_weights)
    except Id2Error as exc:
        return str(exc)
    return None


_notified: set[str] = set()


def resolve_embedder_name(cfg: EmbedderConfig) -> str:
    """``auto`` -> ``fused`` unless ``sscd`` is one of ``embedder.signals`` and does not resolve (then the VAE
    signal alone, with a one-line notice); else the name.

    ``auto`` with ``projection: none`` asks for the raw latent: that signal alone, never fused.
    """
    if cfg.name != "auto":
        return cfg.name
    if cfg.projection == "none":
        return cfg.vae
    reason = sscd_available(cfg) if SSCD in cfg.signals else None
    if reason is None:
        return "fused"
    if reason not in _notified:  # once per process, not once per request
        _notified.add(reason)
        log.warning("embedder: SSCD unavailable, using %s + W alone (%s)", cfg.vae, reason.splitlines()[0])
    return cfg.vae


def default_fusion_path() -> Path:
    return WEIGHTS_DIR / "fusion.json"


def load_fusion(spec: str | Mapping[str, Any]) -> FusionFit:
    """``default`` -> the fit shipped with the package, a mapping -> those weights (signal -> weight, given in
    the config), else a JSON path written by ``fit-fusion``."""
    if isinstance(spec, Mapping):
        return FusionFit({str(k): _weight(k, v) for k, v in spec.items()}, source="embedder.fusion")
    return FusionFit.load(default_fusion_path() if spec == "default" else spec)


def _weight(signal: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"embedder.fusion.{signal}: expected a number (the signal's weight), got {value!r}")
    return float(value)


def default_decision_path() -> Path:
    return WEIGHTS_DIR / "decision.json"


#: the threshold on the cosine when no calibrated operating point holds for the embedder
UNCALIBRATED_THRESHOLD = 0.5


def _notice(message: str) -> None:
    if message not in _notified:  # once per process, not once per request
        _notified.add(message)
        log.warning("%s", message)


def calibrated_model(spec: str, embedder: ImageEmbedder) -> DecisionModel | None:
    """The decision model that holds for ``embedder``: ``match.decision`` ``auto`` or ``cosine`` -> the shipped
    one when fitted for this embedder (else None, with a notice for a multi-signal embedder), a path -> that
    file, refused when fitted for another embedder."""
    model = model_for_identity(spec, embedder.identity)
    if model is None and spec in ("auto", "cosine") and len(embedder.signals) > 1 and default_decision_path().is_file():
        _notice(
            f"decision: the shipped decision model holds for another embedder than {embedder.identity}; "
            "deciding on the uncalibrated cosine (fit one with `id2-plugin fit-decision`)"
        )
    return model


@functools.cache
def _shipped_model() -> DecisionModel | None:
    # Read once per process: the ThreatExchange signal resolves its threshold on every match.
    path = default_decision_path()
    return DecisionModel.load(path) if path.is_file() else None


def model_for_identity(spec: str, identity: str) -> DecisionModel | None:
    """The decision model ``match.decision`` names for the embedder ``identity`` (no model needs loading:
    ``index info`` compares a store's identity): the shipped one when it holds, a given file or an error."""
    if spec in ("auto", "cosine"):
        model = _shipped_model()
        return model if model is not None and model.embedder == identity else None
    model = DecisionModel.load(spec)
    if model.embedder != identity:
        raise ConfigError(f"decision model {spec} was fitted for embedder {model.embedder}, not {identity}")
    return model


def load_decision(spec: str, embedder: ImageEmbedder) -> DecisionModel | None:
    """The model that decides (``match.decision``): None for ``cosine`` or when none holds for ``embedder``."""
    return None if spec == "cosine" else calibrated_model(spec, embedder)


def resolve_threshold(
    threshold: float | str, decision: DecisionModel | None, calibrated: DecisionModel | None = None
) -> float:
    """``match.threshold``: a number as given; ``auto`` -> the deciding model's operating point, or when the
    cosine decides, the cosine threshold the ``calibrated`` model's fit chose for the same target (what a
    host comparing one distance uses); else the uncalibrated cosine default with a notice."""
    if threshold != "auto":
        return float(threshold)
    if decision is not None and decision.operating_point is not None:
        return decision.operating_point.threshold
    if calibrated is not None and calibrated.operating_point is not None:
        return calibrated.operating_point.cosine_threshold
    _notice(
        f"match.threshold: auto has no calibrated operating point for this embedder; using the cosine "
        f"{UNCALIBRATED_THRESHOLD} (run `id2-plugin calibrate` to choose one)"
    )
    return UNCALIBRATED_THRESHOLD


def cosine_threshold(match: MatchConfig, embedder: ImageEmbedder) -> float:
    """The threshold on the store's (fused) cosine for the paths that decide on one distance: ``explain`` of a
    pair without a store, the ThreatExchange / OpenMediaMatch (photo and keyframe signals) and perception
    hosts. A number given with
    ``match.decision: cosine`` (or with no calibration for the embedder) is taken as is; otherwise the cosine
    threshold of the calibration that holds for ``embedder``."""
    calibrated = calibrated_model(match.decision, embedder)
    if match.threshold != "auto" and (match.decision == "cosine" or calibrated is None):
        return float(match.threshold)
    return resolve_threshold("auto", None, calibrated)


def decision_settings(match: MatchConfig, embedder: ImageEmbedder) -> tuple[DecisionModel | None, float]:
    """The deciding model (None: the cosine) and the threshold, for ``embedder`` under the ``match`` section."""
    calibrated = calibrated_model(match.decision, embedder)
    decision = None if match.decision == "cosine" else calibrated
    return decision, resolve_threshold(match.threshold, decision, calibrated)


def open_store(cfg: StoreConfig, *, embedder_identity: str | None, dim: int | None, create: bool) -> ReferenceStore:
    """Open (or with ``create=True`` create) the configured store."""
    factories = store_factories()
    if cfg.backend not in factories:
        raise ConfigError(f"store.backend={cfg.backend!r} is not registered; available: {', '.join(sorted(factories))}")
    spec = StoreSpec(
        location=cfg.location,
        embedder_identity=embedder_identity,
        dim=dim,
        index=cfg.index,
        index_options=dict(cfg.index_options),
        create=create,
        collection=cfg.collection,
        api_key=cfg.api_key,
    )
    return factories[cfg.backend](spec)  # type: ignore[no-any-return]


def match_options(match: MatchConfig, embedder: ImageEmbedder) -> dict[str, Any]:
    """The :class:`~id2_plugin.pipeline.Pipeline` keyword arguments the ``match`` config section sets for
    ``embedder``: the decision model and the threshold resolved (``auto``)."""
    decision, threshold = decision_settings(match, embedder)
    return dict(
        k=match.k,
        threshold=threshold,
        rotations=tuple(match.rotations),
        mirror=match.mirror,
        windows=match.windows,
        decision=decision,
    )
