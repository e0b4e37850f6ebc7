"""Learn W from REAL edit pairs and choose every setting by grouped cross-validation on them.

A :class:`Recipe` names one way of building W (:mod:`id2_plugin.train.linear_maps`): ``pca`` (unsupervised
whitening of unlabelled photos), ``pair-whiten`` (PCA map, then discount what real edits change, shrunk
toward the PCA map) or ``cosface`` (PCA map fine-tuned with CosFace on real pairs, and optionally proxy
pairs, anchored to the start). :func:`select_recipe` scores candidates on folds that never split a photo
and :func:`fit_projection` fits the chosen one on all pairs. The unsupervised PCA map is always a
candidate and the floor: a learned recipe is chosen only when its cross-validated top-1 and mAP are both at
least the PCA map's (``never_below``), so W cannot be shipped below what needs no labels at all.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..embedders.base import Projection
from ..errors import ConfigError
from ..media import iter_image_files
from ..pairs import load_pairs, manifest_digest
from .crossval import CVResult, cross_validate, grouped_folds, origin_groups
from .latents import cache_latents
from .linear_maps import cosface_correction, embed, pair_whitening, pca_whitening
from .train_data import pool_rows

KINDS = ("pca", "pair-whiten", "cosface")


@dataclass(frozen=True)
class Recipe:
    """One way of building W; fields not used by ``kind`` are ignored."""

    kind: str = "pca"
    pool: int = 1
    rank: int = 768
    eps: float = 0.1
    power: float = 0.5
    #: pair-whiten: weight of the identity in the shrunk edit scatter (1 = the PCA map)
    shrink: float = 0.6
    #: cosface: penalty on the distance from the PCA map, optimisation steps, learning rate
    anchor: float = 1.0
    steps: int = 150
    lr: float = 1e-3
    #: cosface: loss weight of a proxy pair relative to a real one (0 = real pairs only)
    proxy_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"recipe kind {self.kind!r} must be one of {', '.join(KINDS)}")

    @property
    def name(self) -> str:
        base = f"{self.kind} pool{self.pool} rank{self.rank} eps{self.eps:g} power{self.power:g}"
        if self.kind == "pair-whiten":
            return f"{base} shrink{self.shrink:g}"
        if self.kind == "cosface":
            return f"{base} anchor{self.anchor:g} proxy{self.proxy_weight:g}"
        return base

    def base(self) -> Recipe:
        """The unsupervised PCA map this recipe starts from."""
        return dataclasses.replace(self, kind="pca")


@dataclass
class PairData:
    """Pooled latents of every image and the roles of their rows.

    ``latents[pool]`` is ``N x d`` float32; ``unlabelled`` rows fit the PCA; real pairs are
    ``(real_query[i], real_origin[i])``; proxy pairs likewise; ``gallery`` rows are the references every
    held-out query is searched among (all origins and distractors).
    """

    latents: dict[int, np.ndarray]
    unlabelled: np.ndarray
    real_query: np.ndarray
    real_origin: np.ndarray
    gallery: np.ndarray
    families: list[str] = field(default_factory=list)
    proxy_query: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    proxy_origin: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def origin_col(self) -> np.ndarray:
        col = {int(r): i for i, r in enumerate(self.gallery)}
        return np.array([col[int(r)] for r in self.real_origin])


def fit_map(
    recipe: Recipe, data: PairData, train: np.ndarray, _pca_cache: dict[Recipe, Any] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, W)`` of ``recipe`` fitted on the unlabelled rows and the real pairs ``train`` (indices)."""
    z = data.latents[recipe.pool]
    key = recipe.base()
    if _pca_cache is not None and key in _pca_cache:
        mean, w0 = _pca_cache[key]
    else:
        mean, w0 = pca_whitening(z[data.unlabelled], rank=recipe.rank, eps=recipe.eps, power=recipe.power)
        if _pca_cache is not None:
            _pca_cache[key] = (mean, w0)
    if recipe.kind == "pca":
        return mean, w0
    q, o = data.real_query[train], data.real_origin[train]
    if recipe.kind == "pair-whiten":
        return mean, pair_whitening(w0, z[q], z[o], shrink=recipe.shrink)
    rows, labels, weights = [q, o], [o, o], [np.ones(len(q)), np.ones(len(o))]
    if recipe.proxy_weight > 0 and len(data.proxy_query):
        # Proxy identities are offset so they never merge with a real origin of the same row number.
        off = int(max(z.shape[0], 1))
        rows += [data.proxy_query, data.proxy_origin]
        labels += [data.proxy_origin + off, data.proxy_origin + off]
        weights += [np.full(len(data.proxy_query), recipe.proxy_weight)] * 2
    x = z[np.concatenate(rows)]
    w = cosface_correction(
        x,
        np.concatenate(labels),
        mean,
        w0,
        anchor=recipe.anchor,
        steps=recipe.steps,
        lr=recipe.lr,
        sample_weights=np.concatenate(weights),
    )
    return mean, w


def cross_validate_recipe(
    recipe: Recipe, data: PairData, folds: np.ndarray, pca_cache: dict[Recipe, Any] | None = None
) -> CVResult:
    z = data.latents[recipe.pool]

    def fit(train: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        mean, w = fit_map(recipe, data, train, pca_cache)
        return lambda rows: embed(z[rows], mean, w)

    return cross_validate(
        recipe.name,
        fit,
        data.real_query,
        data.origin_col,
        data.gallery,
        folds,
        data.families,
        dataclasses.asdict(recipe),
    )


def raw_baseline(data: PairData, folds: np.ndarray) -> CVResult:
    """The raw latent (pool 1, no W) on the same folds: the paper's "VAE embedding"."""
    z = data.latents[1]

    def fit(_train: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        return lambda rows: z[rows] / np.maximum(np.linalg.norm(z[rows], axis=1, keepdims=True), 1e-12)

    return cross_validate("raw latent", fit, data.real_query, data.origin_col, data.gallery, folds, data.families)


def _key(r: CVResult) -> tuple[float, float, float]:
    return r.pooled["top1"] + r.pooled["mAP"], r.pooled["micro_ap"], -len(r.name)


def select_recipe(
    candidates: Sequence[Recipe], data: PairData, folds: np.ndarray, log: Callable[[str], None] = print
) -> tuple[Recipe, list[CVResult]]:
    """The best candidate by cross-validated top-1 + mAP (micro-AP breaks ties), never below the best PCA map.

    Returns the chosen recipe and every candidate's result (best first). A learned recipe whose top-1 or
    mAP is below the best unsupervised PCA candidate's is not chosen.
    """
    cache: dict[Recipe, Any] = {}
    results: list[tuple[Recipe, CVResult]] = []
    for r in candidates:
        res = cross_validate_recipe(r, data, folds, cache)
        results.append((r, res))
        log(
            f"{res.name:60s} top1 {res.pooled['top1']:.3f} mAP {res.pooled['mAP']:.3f} "
            f"micro-AP {res.pooled['micro_ap']:.3f}"
            f"  (fold mAP {res.spread('mAP')[1]:.2f}-{res.spread('mAP')[2]:.2f})"
        )
    pcas = [(r, res) for r, res in results if r.kind == "pca"]
    if not pcas:
        raise ValueError("the candidates must include at least one unsupervised pca recipe (the floor)")
    floor = max(pcas, key=lambda t: _key(t[1]))[1]
    allowed = [(r, res) for r, res in results if r.kind == "pca" or never_below(res, floor)]
    chosen = max(allowed, key=lambda t: _key(t[1]))[0]
    ordered = sorted((res for _, res in results), key=_key, reverse=True)
    return chosen, ordered


def never_below(candidate: CVResult, floor: CVResult) -> bool:
    """Whether ``candidate``'s cross-validated top-1 and mAP are both at least ``floor``'s."""
    return all(candidate.pooled[k] >= floor.pooled[k] - 1e-9 for k in ("top1", "mAP"))


def default_candidates(
    pools: Sequence[int] = (1, 2), ranks: Sequence[int] = (512, 768), proxies: bool = False
) -> list[Recipe]:
    """The documented search space of ``train --recipe auto``."""
    out: list[Recipe] = []
    for pool in pools:
        for rank in ranks:
            for eps in (0.03, 0.1, 1.0):
                base = Recipe("pca", pool=pool, rank=rank, eps=eps)
                out.append(base)
                out += [dataclasses.replace(base, kind="pair-whiten", shrink=s) for s in (0.3, 0.6)]
                out += [dataclasses.replace(base, kind="cosface", anchor=a) for a in (1.0, 10.0)]
                if proxies:
                    out.append(dataclasses.replace(base, kind="cosface", anchor=1.0, proxy_weight=0.5))
    return out


def fit_projection(recipe: Recipe, data: PairData, metadata: dict[str, str]) -> Projection:
    """Fit ``recipe`` on every real pair and wrap it as a :class:`Projection` (with centring) for ``pool``."""
    mean, w = fit_map(recipe, data, np.arange(len(data.real_query)))
    meta = dict(
        metadata, recipe=json.dumps(dataclasses.asdict(recipe), sort_keys=True), trainer="id2_plugin.train.real_pairs"
    )
    return Projection(w, metadata=meta, pool=recipe.pool, mean=mean)


@dataclass
class RealTrainResult:
    """What :func:`train_on_real_pairs` produced: the saved W, the chosen recipe and every CV result."""

    projection: Projection
    recipe: Recipe
    results: list[CVResult]
    raw: CVResult
    n_folds: int

    def report(self) -> dict[str, Any]:
        chosen = next(r for r in self.results if r.name == self.recipe.name)
        return {
            "recipe": dataclasses.asdict(self.recipe),
            "chosen": chosen.to_dict(),
            "raw_latent": self.raw.to_dict(),
            "n_folds": self.n_folds,
            "candidates": [r.to_dict() for r in self.results],
        }


def load_pair_data(
    real_manifests: Sequence[Any],
    unlabelled: Sequence[Any],
    encoder: Any,
    cache_dir: Any,
    *,
    proxy_manifests: Sequence[Any] = (),
    pools: Sequence[int] = (1, 2),
    progress: bool = True,
) -> PairData:
    """Encode every image once (memory-mapped in ``cache_dir``) and lay out the rows of :class:`PairData`."""
    row: dict[Any, int] = {}

    def at(p: Any) -> int:
        return row.setdefault(p.resolve(), len(row))

    real = [p for m in real_manifests for p in load_pairs(m)]
    rq, ro, fams = (
        [at(p.query) for p in real],
        [at(p.origin) for p in real],
        [str(p.extra.get("family") or p.source or "") for p in real],
    )
    proxy = [p for m in proxy_manifests for p in load_pairs(m)]
    pq, po = [at(p.query) for p in proxy], [at(p.origin) for p in proxy]
    unl = [at(p) for p in iter_image_files(list(unlabelled))]
    paths = list(row)
    latents, ok = cache_latents(paths, encoder, cache_dir, progress=progress)
    bad = [str(paths[i]) for i in np.flatnonzero(~ok)]
    if bad:
        raise ConfigError(
            f"{len(bad)} image(s) could not be read, e.g. {bad[0]}; fix or drop them from the manifests / folders"
        )
    all_rows = np.arange(len(paths))
    pooled = {p: pool_rows(latents, all_rows, encoder.latent_shape, p) for p in sorted(set(pools) | {1})}
    origins = sorted(set(ro))
    gallery = np.array(origins + [u for u in unl if u not in set(origins) | set(rq)])
    return PairData(
        pooled,
        np.array(unl),
        np.array(rq),
        np.array(ro),
        gallery,
        fams,
        np.array(pq, dtype=np.int64),
        np.array(po, dtype=np.int64),
    )


def train_on_real_pairs(
    real_manifests: Sequence[Any],
    unlabelled: Sequence[Any],
    out_path: Any,
    *,
    encoder: Any,
    candidates: Sequence[Recipe] | None = None,
    proxy_manifests: Sequence[Any] = (),
    n_folds: int = 5,
    seed: int = 0,
    cache_dir: Any = None,
    save_dtype: str = "float16",
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> RealTrainResult:
    """Select a recipe by grouped cross-validation on the real pairs, fit it on all of them, save W.

    Latents are cached in ``cache_dir`` when given (kept), else in a temporary folder deleted afterwards:
    latents can be decoded back into images.
    """
    cands = list(candidates) if candidates is not None else default_candidates(proxies=bool(proxy_manifests))
    tmp = None if cache_dir is not None else tempfile.TemporaryDirectory(prefix="id2-train-")
    try:
        data = load_pair_data(
            real_manifests,
            unlabelled,
            encoder,
            cache_dir or tmp.name,  # type: ignore[union-attr]
            proxy_manifests=proxy_manifests,
            pools={c.pool for c in cands},
            progress=progress,
        )
    finally:
        if tmp is not None:
            tmp.cleanup()
    origins = np.unique(data.real_origin)
    group_of = dict(zip(origins.tolist(), origin_groups(data.latents[1][origins]).tolist()))
    folds = grouped_folds([group_of[int(o)] for o in data.real_origin], n_folds, seed=seed)
    log(
        f"{len(data.real_query)} real pairs, {len(origins)} origins in {len(set(group_of.values()))} groups, "
        f"{len(data.unlabelled)} unlabelled photos, {len(data.proxy_query)} proxy pairs; "
        f"gallery {len(data.gallery)}; {n_folds} folds"
    )
    raw = raw_baseline(data, folds)
    log(
        f"{'raw latent (no W)':60s} top1 {raw.pooled['top1']:.3f} mAP {raw.pooled['mAP']:.3f} "
        f"micro-AP {raw.pooled['micro_ap']:.3f}"
    )
    chosen, results = select_recipe(cands, data, folds, log)
    meta = {
        "embedder_name": encoder.name,
        "embedder": encoder.identity,
        "latent_shape": json.dumps(list(encoder.latent_shape)),
        "scaling": "none",
        "manifest_digest": json.dumps({str(Path(m).resolve()): manifest_digest(m) for m in real_manifests}),
        "proxy_manifest_digest": json.dumps({str(Path(m).resolve()): manifest_digest(m) for m in proxy_manifests}),
        "seed": str(seed),
        "cross_validated": json.dumps(next(r for r in results if r.name == chosen.name).pooled),
        "raw_latent_cross_validated": json.dumps(raw.pooled),
    }
    proj = fit_projection(chosen, data, meta)
    path = proj.save(out_path, dtype=save_dtype)
    log(f"chosen: {chosen.name}; saved {path}")
    return RealTrainResult(Projection.load(path), chosen, results, raw, n_folds)


__all__ = [
    "KINDS",
    "PairData",
    "RealTrainResult",
    "Recipe",
    "cross_validate_recipe",
    "default_candidates",
    "fit_map",
    "fit_projection",
    "load_pair_data",
    "never_below",
    "raw_baseline",
    "select_recipe",
    "train_on_real_pairs",
]
