"""Explain a match: why a query scores what it scores against one reference.

:func:`explain_match` normalises both images exactly as identification does, reports each signal's cosine
(``id2``, ``sscd`` and ``fused`` when the embedder has them), a spatial similarity map - the cosine
between the two TAEF2 latents cell by cell (the latent is a ``C x H x W`` grid before W pools and projects
it, so each cell describes one patch of the image) - and, for copies and crops, local features matched
between the two images (OpenCV SIFT, Lowe's ratio test, a RANSAC homography) with their inlier count.

With ``out`` it writes one picture (``.png``, or ``.html`` embedding it) there and nowhere else: nothing
image-derived is kept on disk otherwise. What it finds is an :class:`~id2_plugin.explanation.Explanation`;
:mod:`id2_plugin._explain_render` draws it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ._explain_render import render, write_explanation
from ._lazy import require
from .assembly import build_embedder, cosine_threshold
from .config import Config, load_config
from .embedders.base import fit_arrays
from .embedders.fused import FusedEmbedder
from .errors import ConfigError, MissingExtraError
from .explanation import Explanation, LocalMatches
from .identify_context import IdentifyContext
from .media import MediaLike, describe
from .search import decide_pair

if TYPE_CHECKING:
    from .embedders.base import ImageEmbedder
    from .pipeline import Pipeline

#: SIFT matches kept by Lowe's ratio test (best / second-best distance below this)
RATIO = 0.75
#: RANSAC reprojection error in pixels of the normalised image
RANSAC_PX = 5.0
#: fewest ratio-test matches a homography is estimated from (4 define it; fewer than ~8 is noise)
MIN_MATCHES = 8


def cell_similarity(latents: np.ndarray, latent_shape: tuple[int, int, int]) -> np.ndarray:
    """Cosine between two flattened ``C x H x W`` latents at every cell: the channel vectors compared."""
    grid = np.asarray(latents, np.float32).reshape(2, *latent_shape)
    q, r = grid[0], grid[1]
    num = (q * r).sum(axis=0)
    return num / np.maximum(np.linalg.norm(q, axis=0) * np.linalg.norm(r, axis=0), 1e-12)


def match_local_features(query: np.ndarray, reference: np.ndarray) -> LocalMatches:
    """SIFT on both RGB images, ratio-test matches, inliers of a RANSAC homography (query -> reference)."""
    cv2 = require("cv2")
    sift = cv2.SIFT_create()
    kq, dq = sift.detectAndCompute(cv2.cvtColor(query, cv2.COLOR_RGB2GRAY), None)
    kr, dr = sift.detectAndCompute(cv2.cvtColor(reference, cv2.COLOR_RGB2GRAY), None)
    pairs = []
    if dq is not None and dr is not None and len(kr) >= 2:
        pairs = [m for m, n in cv2.BFMatcher(cv2.NORM_L2).knnMatch(dq, dr, k=2) if m.distance < RATIO * n.distance]
    pq = np.float32([kq[m.queryIdx].pt for m in pairs]).reshape(-1, 2)
    pr = np.float32([kr[m.trainIdx].pt for m in pairs]).reshape(-1, 2)
    mask = np.zeros(len(pairs), bool)
    if len(pairs) >= MIN_MATCHES:
        _h, found = cv2.findHomography(pq, pr, cv2.RANSAC, RANSAC_PX)
        if found is not None:
            mask = found.ravel().astype(bool)
    return LocalMatches(pq, pr, mask, (len(kq), len(kr)))


def signal_scores(
    embedder: ImageEmbedder, images: np.ndarray
) -> tuple[dict[str, float], np.ndarray | None, np.ndarray]:
    """Each signal's cosine between ``images[0]`` and ``images[1]`` (normalised), ``fused`` as the weighted
    sum the fused vector's dot product is, the two latents when a signal has one, and the two images'
    vectors as ``embedder`` makes them: every signal runs once per image."""
    latent = embedder.latent_part()
    latents = latent.encoder.encode_arrays(fit_arrays(images, latent.input_size)) if latent is not None else None
    parts = embedder.parts if isinstance(embedder, FusedEmbedder) else [embedder]
    scores: dict[str, float] = {}
    part_vectors = []
    for part in parts:
        vecs = latent.project(latents) if part is latent else part.embed_arrays(images)
        part_vectors.append(vecs)
        scores[part.name] = round(float(vecs[0] @ vecs[1]), 6)
    if isinstance(embedder, FusedEmbedder):
        scores["fused"] = round(sum(embedder.weights[n] * scores[n] for n in embedder.weights), 6)
        return scores, latents, embedder.combine(part_vectors)
    return scores, latents, part_vectors[0]


def explain_pair(
    query: MediaLike,
    reference: MediaLike,
    embedder: ImageEmbedder,
    *,
    threshold: float = 0.5,
    context: IdentifyContext | None = None,
) -> tuple[Explanation, np.ndarray]:
    """The :class:`Explanation` of ``query`` against ``reference`` and the two normalised images
    (``2 x S x S x 3``) it was computed on, for :func:`render_explanation`. Nothing is written.

    ``threshold`` is the pair's fused-cosine threshold; with ``context`` (a pipeline's, holding a decision
    model) the explanation also carries the decision on the pair as identification takes it against that
    store (:func:`~id2_plugin.search.decide_pair`)."""
    images = np.stack([embedder.normalise(query), embedder.normalise(reference)])
    scores, latents, vectors = signal_scores(embedder, images)
    part = embedder.latent_part()
    cells = cell_similarity(latents, part.encoder.latent_shape) if latents is not None else None
    decision = None
    if context is not None and context.decision is not None:
        decision = decide_pair(context, images[0], vectors[1], query_vector=vectors[0])
    expl = Explanation(
        describe(query),
        describe(reference),
        scores,
        cells,
        _local_or_none(images),
        threshold,
        embedder.identity,
        decision=decision,
    )
    return expl, images


def render_explanation(expl: Explanation, images: np.ndarray, fmt: str = "png") -> tuple[bytes, Explanation]:
    """The picture as ``png`` or ``html`` bytes, in memory, and ``expl`` with the panel positions."""
    return render(expl, images, fmt)


def explain_match(
    query: MediaLike,
    reference: MediaLike,
    config: Config | None = None,
    *,
    out: str | os.PathLike | None = None,
    embedder: ImageEmbedder | None = None,
    pipeline: Pipeline | None = None,
) -> Explanation:
    """Explain how ``query`` matches ``reference`` under ``config`` (default: the effective config).

    ``pipeline`` (its embedder and store) adds the decision on the pair as identification against that
    store takes it; else ``embedder`` reuses an already built one (or it is built from ``config.embedder``,
    like identification) and the pair's fused cosine decides. ``out`` (``.png`` or ``.html``) is the only
    file written.
    """
    cfg = config or load_config()
    if out is not None and Path(out).suffix.lower() not in (".png", ".html"):
        raise ConfigError(f"explain output {out}: expected a .png or .html file")
    emb = pipeline.embedder if pipeline is not None else embedder or build_embedder(cfg.embedder, cfg.media.limits())
    context = pipeline.context if pipeline is not None else None
    expl, images = explain_pair(query, reference, emb, threshold=cosine_threshold(cfg.match, emb), context=context)
    if out is None:
        return expl
    return write_explanation(expl, images, Path(out))


def _local_or_none(images: np.ndarray) -> LocalMatches | None:
    """Local features when OpenCV is installed (the ``media`` extra); the explanation stands without them."""
    try:
        return match_local_features(images[0], images[1])
    except MissingExtraError:
        return None
