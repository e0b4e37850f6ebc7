"""The methods a robustness run scores, and the series they form under each resize policy.

The methods are :mod:`id2_plugin.evaluate`'s; comparing resize policies copies the latent methods
(``id2``/``vae_raw``) onto an encoder with another policy, sharing the loaded weights.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from typing import Any

from id2_plugin.cache import latent_cache
from id2_plugin.decision import DecisionModel
from id2_plugin.embedders.base import Embedder
from id2_plugin.errors import ConfigError
from id2_plugin.evaluate import EmbedderMethod, Method, PDQMethod, PHashMethod, default_methods

from .results import Series

#: (resize policy, [(series, method)]): what one normalisation of the images is scored with
Variant = tuple[str, list[tuple[Series, Method]]]


def build_methods(
    embedder: Embedder | None,
    names: Sequence[str] | None = None,
    *,
    cache_root: str | os.PathLike | None = None,
    use_cache: bool = False,
    decision: DecisionModel | None = None,
) -> list[Method]:
    """:func:`id2_plugin.evaluate.default_methods` (latents through the cache; ``fused`` scored by the
    ``decision`` model when one is given), filtered by ``names``.

    ``id2`` needs ``embedder`` to carry a W; asking for it explicitly without one is a :class:`ConfigError`.
    """
    if embedder is None:
        methods: list[Method] = [PDQMethod(), PHashMethod()]
    else:
        latent = embedder.latent_part()
        cache = latent_cache(getattr(latent, "encoder", None), cache_root if use_cache else None)
        methods = default_methods(embedder, cache, decision=decision)
    if names is None:
        return methods
    available = {m.name: m for m in methods}
    missing = [n for n in names if n not in available]
    if "id2" in missing and embedder is not None and getattr(embedder.latent_part(), "projection", None) is None:
        raise ConfigError("method id2 needs a projection W: none is shipped for this embedder; pass --projection PATH")
    if missing:
        raise ConfigError(f"unknown or unavailable method(s) {', '.join(missing)}; available: {', '.join(available)}")
    return [available[n] for n in names]


def _policy_methods(
    methods: Sequence[Method], embedder: Embedder, policy: str, cache_root: Any, use_cache: bool
) -> list[Method]:
    """Copies of the latent methods (``id2``/``vae_raw``) whose encoder uses ``policy``."""
    latent = embedder.latent_part()
    if latent is None:
        return []
    emb = _encoder_for_policy(latent, policy)
    cache = latent_cache(emb.encoder, cache_root if use_cache else None)
    out: list[Method] = []
    for m in methods:
        if isinstance(m, EmbedderMethod) and m.name in ("id2", "vae_raw"):
            out.append(EmbedderMethod(Embedder(emb.encoder, m.embedder.projection), cache, name=m.name))
    return out


def series_variants(
    methods: Sequence[Method],
    resize_policy: str,
    compare_policies: Sequence[str],
    embedder: Embedder | None,
    cache_root: Any,
    use_cache: bool,
    notes: list[str],
) -> list[Variant]:
    """(policy, [(series, method)]) to evaluate; the primary policy carries every method."""
    variants: list[Variant] = [(resize_policy, [(Series(m.name, m.name, resize_policy, True), m) for m in methods])]
    for pol in dict.fromkeys(compare_policies):
        if pol == resize_policy:
            continue
        if embedder is None:
            raise ConfigError("comparing resize policies needs an embedder method (id2 or vae_raw)")
        pms = _policy_methods(methods, embedder, pol, cache_root, use_cache)
        if not pms:
            notes.append("resize-policy comparison skipped: no latent method (id2/vae_raw) selected")
            continue
        variants.append((pol, [(Series(f"{m.name} [{pol}]", m.name, pol, False), m) for m in pms]))
    return variants


def _encoder_for_policy(embedder: Embedder, policy: str) -> Embedder:
    """The same model with another resize policy (a shallow copy shares the loaded weights)."""
    if embedder.encoder.resize_policy == policy:
        return embedder
    enc = copy.copy(embedder.encoder)
    enc.resize_policy = policy  # type: ignore[assignment]
    return Embedder(enc, embedder.projection)
