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

from .config import Config, EmbedderConfig, MatchConfig, StoreConfig
from .decision import CANDIDATES, WINDOW_SIGNAL, DecisionModel, Evidence, candidate_background
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
        _notice(f"decision: the shipped decision model holds for another embedder than {embedder.identity}; "
                "deciding on the uncalibrated cosine (fit one with `id2-plugin fit-decision`)")
    return model


def model_for_identity(spec: str, identity: str) -> DecisionModel | None:
    """The decision model ``match.decision`` names for the embedder ``identity`` (no model needs loading:
    ``index info`` compares a store's identity): the shipped one when it holds, a given file or an error."""
    if spec in ("auto", "cosine"):
        path = default_decision_path()
        model = DecisionModel.load(path) if path.is_file() else None
        return model if model is not None and model.embedder == identity else None
    model = DecisionModel.load(spec)
    if model.embedder != identity:
        raise ConfigError(f"decision model {spec} was fitted for embedder {model.embedder}, not {identity}")
    return model


def load_decision(spec: str, embedder: ImageEmbedder) -> DecisionModel | None:
    """The model that decides (``match.decision``): None for ``cosine`` or when none holds for ``embedder``."""
    return None if spec == "cosine" else calibrated_model(spec, embedder)


def resolve_threshold(threshold: float | str, decision: DecisionModel | None,
                      calibrated: DecisionModel | None = None) -> float:
    """``match.threshold``: a number as given; ``auto`` -> the deciding model's operating point, or when the
    cosine decides, the cosine threshold the ``calibrated`` model's fit chose for the same target (what a
    host comparing one distance uses); else the uncalibrated cosine default with a notice."""
    if threshold != "auto":
        return float(threshold)
    if decision is not None and decision.operating_point is not None:
        return decision.operating_point.threshold
    if calibrated is not None and calibrated.operating_point is not None:
        return calibrated.operating_point.cosine_threshold
    _notice(f"match.threshold: auto has no calibrated operating point for this embedder; using the cosine "
            f"{UNCALIBRATED_THRESHOLD} (run `id2-plugin calibrate` to choose one)")
    return UNCALIBRATED_THRESHOLD


def cosine_threshold(match: MatchConfig, embedder: ImageEmbedder) -> float:
    """The threshold on the store's (fused) cosine for the paths that decide on one distance: video keyframes,
    ``explain`` of a pair, the ThreatExchange / OpenMediaMatch and perception hosts. A number given with
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
    #: the decision model re-scoring the candidates (None: the store's cosine decides)
    decision: DecisionModel | None = None

    @property
    def candidates(self) -> int:
        """References fetched per query: the decision model re-ranks more than ``k`` so that the best by
        its score is among them."""
        return max(self.k, CANDIDATES) if self.decision is not None else self.k

    @property
    def window_floor(self) -> float:
        """Below this best score the windows are not searched in ``auto`` mode (they cannot change the decision)."""
        op = self.decision.operating_point if self.decision is not None else None
        return op.window_floor if op is not None else float("-inf")



class Identifier:
    """A ready pipeline: reuse one instance for many queries (the model loads once)."""

    def __init__(self, embedder: ImageEmbedder, store: ReferenceStore, *, k: int = 5, threshold: float = 0.5,
                 rotations: tuple[int, ...] = (0,), mirror: bool = False, windows: str = "auto",
                 decision: DecisionModel | None = None, batch_size: int | str | None = None) -> None:
        from ._pipelining import BatchSizer, auto_max_batch

        store.check_compatible(embedder.identity)
        if decision is not None and decision.embedder != embedder.identity:
            raise ConfigError(f"the decision model holds for {decision.embedder}, not {embedder.identity}")
        self.context = IdentifyContext(embedder=embedder, store=store, k=k, threshold=threshold,
                                       rotations=tuple(rotations), mirror=mirror, windows=windows, decision=decision)
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


def match_options(match: MatchConfig, embedder: ImageEmbedder) -> dict[str, Any]:
    """The :class:`Identifier` keyword arguments the ``match`` config section sets for ``embedder``: the
    decision model and the threshold resolved (``auto``)."""
    decision, threshold = decision_settings(match, embedder)
    return dict(k=match.k, threshold=threshold, rotations=tuple(match.rotations),
                mirror=match.mirror, windows=match.windows, decision=decision)


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
    n = context.candidates
    found = context.store.query(vecs, k=n)
    t3 = time.perf_counter()
    share = 1e3 / len(images)  # a batch's time, shared equally by its queries
    timings = {"normalise": normalise_ms, "embed": (t2 - t1) * share, "search": (t3 - t2) * share,
               "total": normalise_ms + (t3 - t1) * share}
    best = [_best_of_variants(variants, found[row * nv:(row + 1) * nv], vecs[row * nv:(row + 1) * nv], n)
            for row in range(len(images))]
    if context.decision is not None:
        best = [_decided(context, matches, vectors) for matches, vectors in best]
    best = _second_look(images, vecs[::nv], best, context, timings)
    fmr = _false_match_rate(context)
    return [_report(_evidence_shown(context, matches, vectors), context, timings, describe(query), fmr)
            for query, (matches, vectors) in zip(media, best)]


def _false_match_rate(context: IdentifyContext) -> float | None:
    """The calibrated bound on unrelated queries reported as a match, at this store's size (None: uncalibrated
    or a threshold other than the operating point's)."""
    op = context.decision.operating_point if context.decision is not None else None
    if op is None or context.threshold != op.threshold:
        return None
    return op.per_query_fpr(context.store.info().count)


def _evidence_shown(context: IdentifyContext, matches: list[Match], vectors: np.ndarray) -> list[Match]:
    """The top ``k``; with each signal's cosine attached when the decision model did not already."""
    matches = matches[:context.k]
    if context.decision is not None:
        return matches
    return with_signal_scores(context.embedder, context.store, vectors[:len(matches)] if vectors.ndim == 2 else vectors,
                              matches)


def decide(context: IdentifyContext, matches: list[Match], vectors: np.ndarray,
           windows: tuple[Sequence[str], np.ndarray] | None = None, n_whole: int | None = None) -> list[Match]:
    """``matches`` re-scored by the decision model and re-ranked: each carries the decision score, the store's
    cosine and each signal's cosine. ``vectors``: the query vector each match came from (one row, or one per
    match); ``windows``: the labels and vectors of the query's windows when they were searched; the first
    ``n_whole`` matches (default all) are the whole image's candidates, whose cosines are the query's background."""
    assert context.decision is not None
    if not matches:
        return matches
    refs = context.store.fetch_vectors([m.reference_id for m in matches])
    if refs is None:
        raise Id2Error(f"the {type(context.store).__name__} store cannot return stored vectors, which the decision "
                       "model needs; set match.decision: cosine")
    rows = np.broadcast_to(np.atleast_2d(vectors), (len(matches), refs.shape[1]))
    slices = context.embedder.signals
    cos = {name: np.einsum("ij,ij->i", refs[:, a:b], rows[:, a:b]) / max(w, 1e-12) for name, (a, b, w) in slices.items()}
    background = candidate_background({name: c[:n_whole] for name, c in cos.items()})
    window_cos, label = None, [""] * len(matches)
    if windows is not None and WINDOW_SIGNAL in slices:
        a, b, w = slices[WINDOW_SIGNAL]
        per_window = refs[:, a:b] @ windows[1][:, a:b].T / max(w, 1e-12)
        window_cos = per_window.max(axis=1)
        best_window = per_window.argmax(axis=1)
        label = [windows[0][j] if window_cos[i] > cos[WINDOW_SIGNAL][i] else "" for i, j in enumerate(best_window)]
    evidence = Evidence(cos, window_cos, {name: np.full(len(matches), v) for name, v in background.items()})
    scores = context.decision.score(evidence)
    order = np.argsort(-scores, kind="stable")
    fused = sum(w * cos[name] for name, (_, _, w) in slices.items())
    return [dataclasses.replace(matches[i], rank=r + 1, score=float(scores[i]), cosine=round(float(fused[i]), 6),
                                window=label[i] or matches[i].window,
                                signals=tuple((name, round(float(c[i]), 6)) for name, c in cos.items()))
            for r, i in enumerate(order)]


def _second_look(images: Sequence[np.ndarray], upright: np.ndarray, best: list[tuple[list[Match], np.ndarray]],
                 context: IdentifyContext, timings: dict[str, float]) -> list[tuple[list[Match], np.ndarray]]:
    """Search the query windows of every upright query the whole image did not match (``match.windows``):
    one embedding pass and one store query for all of them. With a decision model, only queries whose
    score is at least its window floor are looked at again, and every candidate is re-scored with the
    windows' evidence; with the cosine, each reference keeps its best score."""
    todo = [i for i, (matches, _) in enumerate(best)
            if needs_second_look(context.windows, matches[0].score if matches else None, context.threshold)
            and (context.windows == "always" or (matches and matches[0].score >= context.window_floor))]
    if not todo:
        return best
    t0 = time.perf_counter()
    labels, crops = zip(*(query_windows(images[i]) for i in todo))
    whole = np.concatenate([np.repeat(upright[i][None], len(c), axis=0) for i, c in zip(todo, crops)])
    vecs = context.embedder.embed_windows(np.concatenate(crops), whole)
    found = context.store.query(vecs, k=context.candidates)
    out = list(best)
    for j, i in enumerate(todo):
        nw = len(labels[j])
        window_found, window_vecs = found[j * nw:(j + 1) * nw], vecs[j * nw:(j + 1) * nw]
        if context.decision is not None:
            out[i] = _decide_with_windows(context, best[i], upright[i], window_found, (labels[j], window_vecs))
        else:
            out[i] = _merge_windows(context, best[i], window_found, labels[j], window_vecs)
    timings["windows"] = (time.perf_counter() - t0) * 1e3 / len(images)
    timings["total"] += timings["windows"]
    return out


def _decided(context: IdentifyContext, matches: list[Match], vectors: np.ndarray,
             windows: tuple[Sequence[str], np.ndarray] | None = None, n_whole: int | None = None,
             ) -> tuple[list[Match], np.ndarray]:
    """:func:`decide`, with the query vector each re-ranked match came from kept beside it."""
    rows = np.broadcast_to(np.atleast_2d(vectors), (len(matches), np.atleast_2d(vectors).shape[1]))
    came_from = {m.reference_id: r for m, r in zip(matches, rows)}
    decided = decide(context, matches, rows, windows, n_whole)
    return decided, np.stack([came_from[m.reference_id] for m in decided]) if decided else rows[:0]


def _decide_with_windows(context: IdentifyContext, best: tuple[list[Match], np.ndarray], upright: np.ndarray,
                         window_found: Sequence[Sequence[Match]], windows: tuple[Sequence[str], np.ndarray],
                         ) -> tuple[list[Match], np.ndarray]:
    """The whole image's candidates and the windows' new ones, all re-scored with the windows' evidence."""
    matches, vectors = best
    rows = np.broadcast_to(np.atleast_2d(vectors), (len(matches), len(upright)))
    seen = {m.reference_id for m in matches}
    extra = list({m.reference_id: m for ms in window_found for m in ms if m.reference_id not in seen}.values())
    candidates = [*matches, *(dataclasses.replace(m, window="") for m in extra)]
    all_rows = np.concatenate([rows, np.repeat(upright[None], len(extra), axis=0)])
    return _decided(context, candidates, all_rows, windows, n_whole=len(matches))


def _merge_windows(context: IdentifyContext, best: tuple[list[Match], np.ndarray], window_found: Sequence[Sequence[Match]],
                   labels: Sequence[str], window_vecs: np.ndarray) -> tuple[list[Match], np.ndarray]:
    """Each reference's best cosine over the whole query and its windows (the cosine decision)."""
    matches, whole_vectors = best
    rows = np.atleast_2d(whole_vectors)
    came_from = {m.reference_id: rows[0 if len(rows) == 1 else r] for r, m in enumerate(matches)}
    ranked = best_over_windows(matches, window_found, labels, context.k)
    vectors = [window_vecs[wi] if wi >= 0 else came_from[m.reference_id] for m, wi in ranked]
    return [m for m, _ in ranked], np.stack(vectors) if vectors else rows[:0]


def _report(matches: list[Match], context: IdentifyContext, timings: dict[str, float], query: str,
            false_match_rate: float | None) -> OriginReport:
    best = matches[0].score if matches else float("-inf")
    return OriginReport(
        score_kind="decision" if context.decision is not None else "cosine",
        false_match_rate=false_match_rate,
        matches=tuple(matches),
        is_match=bool(matches) and best >= context.threshold,
        threshold=context.threshold,
        embedder=context.embedder.identity,
        projection=context.embedder.projection_id,
        timings_ms=timings,
        query=query,
    )
