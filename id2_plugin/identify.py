"""Building the pipeline from configuration, and the identification entry point."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .config import Config, EmbedderConfig, StoreConfig
from .framing import (best_over_orientations, best_over_windows, needs_second_look, orient, orientation_variants,
                      query_windows)
from ._lazy import require_onnxruntime
from .errors import ConfigError, Id2Error, MediaError
from .media import MediaLike, MediaLimits
from .plugins import embedder_factories, get_plugin_manager, store_factories
from .types import Match, OriginReport

if TYPE_CHECKING:
    from .embedders.base import ImageEmbedder, LatentEncoder, Projection
    from .embedders.fused import FusionFit
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


def build_encoder(cfg: EmbedderConfig, limits: MediaLimits | None = None) -> LatentEncoder:
    """The latent encoder (for ``auto``/``fused``: the one named by ``embedder.vae``)."""
    name = cfg.vae if cfg.name in COMPOSITE_NAMES else cfg.name
    return _build_registered(name, cfg, cfg.weights, limits)


def _build_registered(name: str, cfg: EmbedderConfig, weights: str | None, limits: MediaLimits | None) -> Any:
    factories = embedder_factories()
    if name not in factories:
        choices = ", ".join([*COMPOSITE_NAMES, *sorted(factories)])
        raise ConfigError(f"embedder.name={name!r} is not registered; available: {choices}")
    kwargs: dict[str, Any] = dict(
        weights=weights,
        input_size=cfg.input_size,
        batch_size=cfg.model_batch_size,
        device=cfg.device,
        dtype=cfg.dtype,
        resize_policy=cfg.resize_policy,
        limits=limits,
    )
    if cfg.subfolder is not None and name == "sd-vae":
        kwargs["subfolder"] = cfg.subfolder
    # Passed only when asked for, so factories that predate these keys keep working.
    asked = {"precision": (cfg.precision, "fp32"), "runtime": (cfg.runtime, "auto")}
    kwargs.update({key: value for key, (value, default) in asked.items() if value != default})
    try:
        return factories[name](**kwargs)
    except TypeError as exc:
        key = next((k for k in asked if k in str(exc)), None)
        if key is None:
            raise
        value, default = asked[key]
        raise ConfigError(f"embedder {name!r} does not support embedder.{key}={value!r}; use {default}") from None


def load_projection(spec: str, encoder_name: str) -> Projection | None:
    """``default`` -> the shipped W for the encoder (None if there is none), ``none`` -> None, else a path."""
    from .embedders.base import Projection

    if spec == "none":
        return None
    if spec == "default":
        p = default_projection_path(encoder_name)
        return Projection.load(p) if p else None
    return Projection.load(spec)


def build_embedder(cfg: EmbedderConfig, limits: MediaLimits | None = None, *, in_memory_only: bool = False) -> ImageEmbedder:
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
    from .evaluate import latent_part

    part = latent_part(embedder)
    if part is not None and part.projection is None:
        raise ConfigError(
            f"embedder {embedder.identity} has no W (embedder.projection is 'none', or no W is shipped for "
            f"{part.encoder.name}): its vectors are raw VAE latents, which decode back into near-copies of the "
            "images. Give a W (embedder.projection: PATH), or accept storing them with "
            "embedder.allow_raw_latent: true (--set embedder.allow_raw_latent=true)"
        )


def _build_embedder(cfg: EmbedderConfig, limits: MediaLimits | None) -> ImageEmbedder:
    from .embedders.base import Embedder, ImageEmbedder
    from .embedders.fused import FusedEmbedder

    name = resolve_embedder_name(cfg)
    if name == SSCD:
        return _build_sscd(cfg, cfg.weights, limits)
    if name == "fused":
        return FusedEmbedder(build_signals(cfg, limits), load_fusion(cfg.fusion), resize_policy=cfg.resize_policy, limits=limits)  # type: ignore[arg-type]
    built = _build_registered(name, cfg, cfg.weights, limits)
    if isinstance(built, ImageEmbedder):  # a whole signal (like sscd): no W to add
        return built
    return Embedder(built, load_projection(cfg.projection, built.name))


def build_signals(cfg: EmbedderConfig, limits: MediaLimits | None = None) -> list[ImageEmbedder]:
    """The signals a fused embedder combines: the VAE encoder (``embedder.vae``) with its W, and SSCD."""
    from .embedders.base import Embedder

    encoder = _build_registered(cfg.vae, cfg, cfg.weights, limits)
    return [Embedder(encoder, load_projection(cfg.projection, encoder.name)), _build_sscd(cfg, cfg.sscd_weights, limits)]


def _build_sscd(cfg: EmbedderConfig, weights: str | None, limits: MediaLimits | None) -> ImageEmbedder:
    sscd = replace(cfg, input_size=cfg.sscd_input_size)
    return _build_registered(SSCD, sscd, weights, limits)  # type: ignore[no-any-return]


def sscd_available(cfg: EmbedderConfig) -> str | None:
    """None when an SSCD model and ONNX Runtime resolve for ``cfg``, else the reason they do not."""
    from .embedders.sscd import resolve_sscd_model

    try:
        require_onnxruntime()
        resolve_sscd_model(cfg.sscd_weights)
    except Id2Error as exc:
        return str(exc)
    return None


_notified: set[str] = set()


def resolve_embedder_name(cfg: EmbedderConfig) -> str:
    """``auto`` -> ``fused`` when SSCD resolves, else the VAE signal alone (with a one-line notice); else the name.

    ``auto`` with ``projection: none`` asks for the raw latent: that signal alone, never fused.
    """
    if cfg.name != "auto":
        return cfg.name
    if cfg.projection == "none":
        return cfg.vae
    reason = sscd_available(cfg)
    if reason is None:
        return "fused"
    if reason not in _notified:  # once per process, not once per request
        _notified.add(reason)
        log.warning("embedder: SSCD unavailable, using %s + W alone (%s)", cfg.vae, reason.splitlines()[0])
    return cfg.vae


def default_fusion_path() -> Path:
    return WEIGHTS_DIR / "fusion.json"


def load_fusion(spec: str) -> FusionFit:
    """``default`` -> the fit shipped with the package, else a JSON path written by ``fit-fusion``."""
    from .embedders.fused import FusionFit

    return FusionFit.load(default_fusion_path() if spec == "default" else spec)


def open_store(cfg: StoreConfig, *, embedder_identity: str | None, dim: int | None, create: bool) -> ReferenceStore:
    """Open (or with ``create=True`` create) the configured store."""
    factories = store_factories()
    if cfg.backend not in factories:
        raise ConfigError(f"store.backend={cfg.backend!r} is not registered; available: {', '.join(sorted(factories))}")
    return factories[cfg.backend](  # type: ignore[no-any-return]
        location=cfg.location,
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

    embedder: ImageEmbedder
    store: ReferenceStore
    k: int = 5
    threshold: float = 0.5
    #: query-time rotations searched (``match.rotations``) and whether mirrored too (``match.mirror``)
    rotations: tuple[int, ...] = (0,)
    mirror: bool = False
    #: query windows searched as a second look (``match.windows``: ``auto``, ``always`` or ``off``)
    windows: str = "auto"


class Identifier:
    """A ready pipeline: reuse one instance for many queries (the model loads once)."""

    def __init__(self, embedder: ImageEmbedder, store: ReferenceStore, *, k: int = 5, threshold: float = 0.5,
                 rotations: tuple[int, ...] = (0,), mirror: bool = False, windows: str = "auto",
                 batch_size: int | str | None = None) -> None:
        from ._pipelining import BatchSizer, auto_max_batch

        store.check_compatible(embedder.identity)
        self.context = IdentifyContext(embedder=embedder, store=store, k=k, threshold=threshold,
                                       rotations=tuple(rotations), mirror=mirror, windows=windows)
        #: batches of :meth:`identify_iter` (``batch_size``: an int, ``auto``, or None = the embedder's)
        self.batching = BatchSizer(batch_size or embedder.batch_size, max_size=auto_max_batch(embedder.input_size))

    @classmethod
    def from_config(cls, cfg: Config) -> Identifier:
        """The identify-only face of :meth:`id2_plugin.pipeline.Pipeline.from_config` (one way to build)."""
        from .pipeline import Pipeline

        return Pipeline.from_config(cfg).identifier

    def identify(self, media: MediaLike, *, k: int | None = None) -> OriginReport:
        """Run the ``id2_identify_origin`` hook (plugins first, the built-in search last); ``k`` overrides match.k."""
        report = get_plugin_manager().hook.id2_identify_origin(media=media, context=self._context(k))
        if report is None:
            raise RuntimeError("no plugin answered id2_identify_origin (is the built-in plugin disabled?)")
        return report  # type: ignore[no-any-return]

    def identify_many(self, media: Sequence[MediaLike], *, k: int | None = None) -> list[OriginReport | MediaError]:
        """:meth:`identify` for each query (an unusable one gives its :class:`MediaError`), in order."""
        return list(self.identify_iter(media, k=k))

    def identify_iter(self, media: Iterable[MediaLike], *, k: int | None = None) -> Iterator[OriginReport | MediaError]:
        """:meth:`identify_many` streamed as batches finish. With only the built-in search installed, queries
        are decoded in threads overlapped with batched embedding and search (:attr:`batching`); a plugin
        implementing ``id2_identify_origin`` sees every query one by one."""
        if len(get_plugin_manager().hook.id2_identify_origin.get_hookimpls()) > 1:
            yield from (_or_error(lambda m: self.identify(m, k=k), m) for m in media)
            return
        from ._pipelining import pipelined

        context = self._context(k)

        def normalise(m: MediaLike) -> tuple[np.ndarray, float]:
            t0 = time.perf_counter()
            return context.embedder.normalise(m), (time.perf_counter() - t0) * 1e3

        def model(batch: list[MediaLike], prepared: list[tuple[np.ndarray, float]]) -> list[OriginReport]:
            ms = sum(t for _, t in prepared) / len(prepared)
            return search_normalised(batch, [im for im, _ in prepared], context, ms)

        for done in pipelined(media, normalise, model, batch_size=self.batching):
            yield done.error if done.error is not None else done.output

    def _context(self, k: int | None) -> IdentifyContext:
        if k is None or k == self.context.k:
            return self.context
        if k < 1:
            raise ConfigError(f"k={k} must be >= 1")
        return replace(self.context, k=k)


def _or_error(fn: Any, media: MediaLike) -> Any:
    try:
        return fn(media)
    except MediaError as exc:
        return exc


def match_options(cfg: Config) -> dict[str, Any]:
    """The :class:`Identifier` keyword arguments the ``match`` config section sets."""
    m = cfg.match
    return dict(k=m.k, threshold=m.threshold, rotations=tuple(m.rotations), mirror=m.mirror, windows=m.windows)


def with_signal_scores(embedder: ImageEmbedder, store: ReferenceStore, vector: Any, matches: list[Match]) -> list[Match]:
    """``matches`` with each signal's own cosine attached, when the embedding has several signals.

    ``vector`` is the query's embedding, or one row per match (the query variant each match came from).
    """
    if len(embedder.signals) < 2 or not matches:
        return matches
    refs = store.fetch_vectors([m.reference_id for m in matches])
    if refs is None:
        return matches
    queries = np.broadcast_to(np.atleast_2d(vector), (len(matches), refs.shape[1]))
    per = [embedder.signal_scores(q, r[None])[0] for q, r in zip(queries, refs)]
    return [dataclasses.replace(m, signals=tuple(s.items())) for m, s in zip(matches, per)]


def _best_of_variants(variants: list[tuple[int, bool]], per_variant: list[list[Match]], vecs: np.ndarray,
                      k: int) -> tuple[list[Match], np.ndarray]:
    """Top matches over one query's orientation variants (best score per reference) and the vector each came from."""
    if len(variants) == 1:
        return per_variant[0], vecs[0]
    ranked = best_over_orientations(per_variant, variants, k)
    return [m for m, _ in ranked], vecs[[vi for _, vi in ranked]]


def search(media: MediaLike, context: IdentifyContext) -> OriginReport:
    """The built-in identification: normalise, embed, query the store, decide against the threshold."""
    report = search_many([media], context)[0]
    if isinstance(report, MediaError):
        raise report
    return report


def search_many(media: Sequence[MediaLike], context: IdentifyContext) -> list[OriginReport | MediaError]:
    """:func:`search` for a batch: one forward pass and one store query for every usable query."""
    t0 = time.perf_counter()
    images = [_or_error(context.embedder.normalise, m) for m in media]
    ok = [i for i, im in enumerate(images) if not isinstance(im, MediaError)]
    normalise_ms = (time.perf_counter() - t0) * 1e3 / max(len(ok), 1)
    out: list[Any] = list(images)  # errors stay; the usable ones are replaced by their reports below
    reports = search_normalised([media[i] for i in ok], [images[i] for i in ok], context, normalise_ms) if ok else []
    for i, report in zip(ok, reports):
        out[i] = report
    return out


def search_normalised(media: Sequence[MediaLike], images: Sequence[np.ndarray], context: IdentifyContext,
                      normalise_ms: float = 0.0) -> list[OriginReport]:
    """The reports for already normalised queries (``media`` names them): one forward pass, one store query.

    ``normalise_ms`` is the decoding time per query, reported in the timings (in a pipelined stream it ran
    beside the model, so ``total`` overstates the wall time a query adds).
    """
    from .media import describe

    t1 = time.perf_counter()
    # Every orientation variant of every query in one forward pass and one store query.
    variants = orientation_variants(context.rotations, context.mirror)
    nv = len(variants)
    vecs = context.embedder.embed_arrays(np.stack([orient(im, r, m) for im in images for r, m in variants]))
    t2 = time.perf_counter()
    found = context.store.query(vecs, k=context.k)
    t3 = time.perf_counter()
    share = 1e3 / len(images)  # a batch's time, shared equally by its queries
    timings = {"normalise": normalise_ms, "embed": (t2 - t1) * share, "search": (t3 - t2) * share,
               "total": normalise_ms + (t3 - t1) * share}
    best = [_best_of_variants(variants, found[row * nv:(row + 1) * nv], vecs[row * nv:(row + 1) * nv], context.k)
            for row in range(len(images))]
    best = _second_look(images, vecs[::nv], best, context, timings)
    return [_report(with_signal_scores(context.embedder, context.store, vectors, matches), context, timings, describe(query))
            for query, (matches, vectors) in zip(media, best)]


def _second_look(images: Sequence[np.ndarray], upright: np.ndarray, best: list[tuple[list[Match], np.ndarray]],
                 context: IdentifyContext, timings: dict[str, float]) -> list[tuple[list[Match], np.ndarray]]:
    """Search the query windows of every upright query the whole image did not match (``match.windows``):
    one embedding pass and one store query for all of them; each reference keeps its best score."""
    todo = [i for i, (matches, _) in enumerate(best)
            if needs_second_look(context.windows, matches[0].score if matches else None, context.threshold)]
    if not todo:
        return best
    t0 = time.perf_counter()
    labels, crops = zip(*(query_windows(images[i]) for i in todo))
    whole = np.concatenate([np.repeat(upright[i][None], len(c), axis=0) for i, c in zip(todo, crops)])
    vecs = context.embedder.embed_windows(np.concatenate(crops), whole)
    found = context.store.query(vecs, k=context.k)
    out = list(best)
    for j, i in enumerate(todo):
        nw = len(labels[j])
        matches, whole_vectors = best[i]
        rows = np.atleast_2d(whole_vectors)
        came_from = {m.reference_id: rows[0 if len(rows) == 1 else r] for r, m in enumerate(matches)}
        ranked = best_over_windows(matches, found[j * nw:(j + 1) * nw], labels[j], context.k)
        window_vecs = vecs[j * nw:(j + 1) * nw]
        vectors = [window_vecs[wi] if wi >= 0 else came_from[m.reference_id] for m, wi in ranked]
        out[i] = ([m for m, _ in ranked], np.stack(vectors) if vectors else rows[:0])
    timings["windows"] = (time.perf_counter() - t0) * 1e3 / len(images)
    timings["total"] += timings["windows"]
    return out


def _report(matches: list[Match], context: IdentifyContext, timings: dict[str, float], query: str) -> OriginReport:
    best = matches[0].score if matches else float("-inf")
    return OriginReport(
        matches=tuple(matches),
        is_match=bool(matches) and best >= context.threshold,
        threshold=context.threshold,
        embedder=context.embedder.identity,
        projection=context.embedder.projection_id,
        timings_ms=timings,
        query=query,
    )
