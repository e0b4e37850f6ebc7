"""Building the pipeline from configuration, and the identification entry point."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import Config, EmbedderConfig, StoreConfig
from .errors import ConfigError
from .media import MediaLike, MediaLimits
from .plugins import embedder_factories, get_plugin_manager, store_factories
from .types import OriginReport

if TYPE_CHECKING:
    from .embedders.base import Embedder, LatentEncoder, Projection
    from .stores.base import ReferenceStore

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def default_projection_path(encoder_name: str) -> Path | None:
    """The W shipped with the package for ``encoder_name``, if any."""
    p = WEIGHTS_DIR / f"{encoder_name}_w.safetensors"
    return p if p.is_file() else None


def build_encoder(cfg: EmbedderConfig, limits: MediaLimits | None = None) -> LatentEncoder:
    factories = embedder_factories()
    if cfg.name not in factories:
        raise ConfigError(f"embedder.name={cfg.name!r} is not registered; available: {', '.join(sorted(factories))}")
    kwargs: dict[str, Any] = dict(
        weights=cfg.weights,
        input_size=cfg.input_size,
        batch_size=cfg.batch_size,
        device=cfg.device,
        dtype=cfg.dtype,
        resize_policy=cfg.resize_policy,
        limits=limits,
    )
    if cfg.subfolder is not None:
        kwargs["subfolder"] = cfg.subfolder
    return factories[cfg.name](**kwargs)  # type: ignore[no-any-return]


def load_projection(spec: str, encoder_name: str) -> Projection | None:
    """``default`` -> the shipped W for the encoder (None if there is none), ``none`` -> None, else a path."""
    from .embedders.base import Projection

    if spec == "none":
        return None
    if spec == "default":
        p = default_projection_path(encoder_name)
        return Projection.load(p) if p else None
    return Projection.load(spec)


def build_embedder(cfg: EmbedderConfig, limits: MediaLimits | None = None) -> Embedder:
    """Latent encoder + W (or raw latent) from the ``embedder`` config section."""
    from .embedders.base import Embedder

    encoder = build_encoder(cfg, limits)
    return Embedder(encoder, load_projection(cfg.projection, cfg.name))


def open_store(cfg: StoreConfig, *, embedder_identity: str | None, dim: int | None, create: bool) -> ReferenceStore:
    """Open (or with ``create=True`` create) the configured store."""
    factories = store_factories()
    if cfg.backend not in factories:
        raise ConfigError(f"store.backend={cfg.backend!r} is not registered; available: {', '.join(sorted(factories))}")
    return factories[cfg.backend](  # type: ignore[no-any-return]
        location=cfg.path if cfg.backend == "faiss" else (cfg.url or cfg.path),
        embedder_identity=embedder_identity,
        dim=dim,
        index=cfg.index,
        index_options=dict(cfg.index_options),
        create=create,
        collection=cfg.collection,
        api_key=cfg.api_key,
    )


@dataclass
class IdentifyContext:
    """What :func:`id2_identify_origin` implementations get besides the media."""

    embedder: Embedder
    store: ReferenceStore
    k: int = 5
    threshold: float = 0.5


class Identifier:
    """A ready pipeline: reuse one instance for many queries (the model loads once)."""

    def __init__(self, embedder: Embedder, store: ReferenceStore, *, k: int = 5, threshold: float = 0.5) -> None:
        store.check_compatible(embedder.identity)
        self.context = IdentifyContext(embedder=embedder, store=store, k=k, threshold=threshold)

    @classmethod
    def from_config(cls, cfg: Config) -> Identifier:
        limits = MediaLimits(max_pixels=cfg.media.max_pixels, max_bytes=cfg.media.max_bytes)
        embedder = build_embedder(cfg.embedder, limits)
        store = open_store(cfg.store, embedder_identity=embedder.identity, dim=embedder.dim, create=False)
        return cls(embedder, store, k=cfg.match.k, threshold=cfg.match.threshold)

    def identify(self, media: MediaLike) -> OriginReport:
        """Run the ``id2_identify_origin`` hook (plugins first, the built-in search last)."""
        report = get_plugin_manager().hook.id2_identify_origin(media=media, context=self.context)
        if report is None:
            raise RuntimeError("no plugin answered id2_identify_origin (is the built-in plugin disabled?)")
        return report  # type: ignore[no-any-return]


def search(media: MediaLike, context: IdentifyContext) -> OriginReport:
    """The built-in identification: normalise, embed, query the store, decide against the threshold."""
    from .media import describe

    t0 = time.perf_counter()
    image = context.embedder.encoder.normalise(media)
    t1 = time.perf_counter()
    vec = context.embedder.embed_arrays(image[None])
    t2 = time.perf_counter()
    matches = context.store.query(vec, k=context.k)[0]
    t3 = time.perf_counter()
    best = matches[0].score if matches else float("-inf")
    return OriginReport(
        matches=tuple(matches),
        is_match=bool(matches) and best >= context.threshold,
        threshold=context.threshold,
        embedder=context.embedder.encoder.identity,
        projection=context.embedder.projection_id,
        timings_ms={
            "normalise": (t1 - t0) * 1e3,
            "embed": (t2 - t1) * 1e3,
            "search": (t3 - t2) * 1e3,
            "total": (t3 - t0) * 1e3,
        },
        query=describe(media),
    )
