"""Run attacks x methods: the configuration of a robustness run and its one entry point, :func:`run_robustness`.

The metrics and the methods are :mod:`id2_plugin.evaluate`'s (``compute_metrics``, ``EmbedderMethod``,
``PDQMethod``, ``PHashMethod``): this module checks the run's settings, loads the queries and embeds every
reference once per method; :mod:`.levels` attacks, embeds and scores the queries level by level. With an
opt-in cache root every latent comes from :class:`~id2_plugin.cache.LatentCache`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from id2_plugin.embedders.base import Embedder
from id2_plugin.errors import ConfigError, MediaError
from id2_plugin.evaluate import Method, embed_images
from id2_plugin.media import MediaLimits, load_image, to_rgb_array

from .attacks import SuiteEntry
from .datasets import RobustnessSet
from .levels import LevelRun
from .methods import Variant, series_variants
from .provenance import provenance
from .results import RobustnessResult

RESIZE_POLICIES = ("squash", "center_crop", "pad")


def run_robustness(
    dataset: RobustnessSet,
    methods: Sequence[Method],
    suite: Sequence[SuiteEntry],
    *,
    seed: int = 0,
    embedder: Embedder | None = None,
    input_size: int | None = None,
    resize_policy: str = "squash",
    compare_policies: Sequence[str] = (),
    cache_root: str | os.PathLike | None = None,
    use_cache: bool = False,
    n_failures: int = 3,
    limits: MediaLimits | None = None,
    progress: bool = True,
    command: Sequence[str] | None = None,
    threshold: float | None = None,
) -> RobustnessResult:
    """Evaluate ``methods`` on the clean queries and on every attack level of ``suite``.

    ``compare_policies``: extra resize policies (besides ``resize_policy``) under which the latent methods
    of ``embedder`` are evaluated too, giving series such as ``vae_raw [center_crop]``.
    Failures: for every series and level, the ``n_failures`` queries whose wrong top match scored highest
    above their origin; thumbnails are kept for the strongest level of each family.
    ``threshold`` (match.threshold): the configured embedder's series also report the share of queries
    a deployment at that threshold would report as a correct MATCH; every top-1 has a 95% interval.
    """
    if input_size is None:
        input_size = embedder.input_size if embedder is not None else 256
    if embedder is not None:
        resize_policy = embedder.resize_policy
    _check_settings(methods, (resize_policy, *compare_policies))
    limits = limits or MediaLimits()
    size = (input_size, input_size)
    notes: list[str] = []
    variants = series_variants(methods, resize_policy, compare_policies, embedder, cache_root, use_cache, notes)
    queries, q_keep = _load_queries(dataset.query_paths, limits, notes)
    ref_arrays, r_keep = _load_references(dataset.reference_paths, [pol for pol, _ in variants], size, limits, notes)
    positives = dataset.positives[np.ix_(q_keep, r_keep)]
    if not positives.any(axis=1).any():
        raise ConfigError("no query has a readable origin among the references")
    run = LevelRun(
        variants,
        _embed_references(variants, ref_arrays, progress),
        positives,
        [dataset.query_paths[i].name for i in q_keep],
        [str(dataset.reference_paths[j]) for j in r_keep],
        size,
        seed,
        limits,
        n_failures,
        progress,
        threshold,
        embedder.name if embedder is not None else None,
    )
    points, failures = run.all_levels(queries, suite)
    return RobustnessResult(
        points=points,
        failures=failures,
        suite=_suite_description(suite),
        series=[s for _, members in variants for s, _ in members],
        provenance=provenance(embedder=embedder, seed=seed, dataset=dataset, command=command),
        dataset={
            "kind": dataset.kind,
            "n_queries": len(q_keep),
            "n_references": len(r_keep),
            "n_distractors": dataset.n_distractors,
            "input_size": input_size,
            "resize_policy": resize_policy,
            "compared_policies": [pol for pol, _ in variants],
            "methods": [m.name for m in methods],
        },
        notes=notes + dataset.skipped,
    )


def _check_settings(methods: Sequence[Method], policies: Sequence[str]) -> None:
    """Refuse an unknown resize policy or ambiguous method names before any image is read."""
    for pol in policies:
        if pol not in RESIZE_POLICIES:
            raise ConfigError(f"resize policy {pol!r}: expected one of {', '.join(RESIZE_POLICIES)}")
    names = [m.name for m in methods]
    if len(set(names)) != len(names) or not names:
        raise ConfigError(f"method names must be unique and non-empty, got {names}")


def _embed_references(
    variants: Sequence[Variant], ref_arrays: dict[str, np.ndarray], progress: bool
) -> dict[str, np.ndarray]:
    """Every series' reference embeddings, computed once for all attack levels."""
    return {
        series.name: embed_images(method, ref_arrays[pol], progress=f"{series.name}: references" if progress else False)
        for pol, members in variants
        for series, method in members
    }


def _load_queries(paths: Sequence[Path], limits: MediaLimits, notes: list[str]) -> tuple[list[np.ndarray], list[int]]:
    """Queries at native size (what gets attacked) and their indices; unreadable files dropped with a note."""
    queries, keep = [], []
    for i, p in enumerate(paths):
        try:
            queries.append(np.asarray(load_image(p, limits=limits)))
            keep.append(i)
        except MediaError as exc:
            notes.append(f"query skipped: {exc}")
    return queries, keep


def _load_references(
    paths: Sequence[Path], policies: Sequence[str], size: tuple[int, int], limits: MediaLimits, notes: list[str]
) -> tuple[dict[str, np.ndarray], list[int]]:
    """References normalised once per policy, and the indices readable under the primary (first) policy."""
    arrays: dict[str, np.ndarray] = {}
    keep: list[int] | None = None
    for pol in policies:
        arrs, kept = [], []
        for j, p in enumerate(paths):
            try:
                arrs.append(to_rgb_array(p, size, policy=pol, limits=limits))  # type: ignore[arg-type]
                kept.append(j)
            except MediaError as exc:
                if pol == policies[0]:
                    notes.append(f"reference skipped: {exc}")
        keep = kept if keep is None else keep
        arrays[pol] = np.stack(arrs) if arrs else np.zeros((0, *size, 3), np.uint8)
    return arrays, keep or []


def _suite_description(suite: Sequence[SuiteEntry]) -> list[dict[str, Any]]:
    clean = {"family": "clean", "levels": [{"label": "clean", "intensity": 0.0, "repr": "Identity()"}]}
    return [clean] + [
        {
            "family": e.family,
            "levels": [{"label": a.label, "intensity": a.intensity, "repr": repr(a)} for a in e.levels],
        }
        for e in suite
    ]
