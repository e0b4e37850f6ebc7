"""The training data of W: the split by origin, the cached latent matrix, pooled features, the validation set.

Training and validation never share an origin: either a validation manifest is given, or a seeded
fraction of the origins is held out. Held-out queries are searched among the held-out origins, the
training origins and the distractors, so a validation top-1 is a retrieval result, not a classification.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..cache import LatentCache
from ..embedders.base import LatentEncoder, Projection, l2_normalise
from ..errors import ConfigError
from ..metrics import single_origin_metrics
from ..pairs import group_by_origin, load_pairs
from .latents import cache_latents
from .linear_maps import remove_direction
from .train_config import TrainConfig


@dataclass
class _Split:
    paths: list[Path]
    #: per training identity: row indices (origin first when readable) into ``paths``
    members: list[list[int]]
    val_queries: list[int]
    val_query_origin: list[int]  # index into val_gallery
    val_gallery: list[int]


def _build_split(
    pairs_path: Path, val_pairs_path: Path | None, distractors: Sequence[Path], cfg: TrainConfig
) -> tuple[list[Path], list[list[Path]], list[tuple[Path, list[Path]]], list[Path]]:
    """(unique image paths, training groups [origin, *queries], validation groups, distractors)."""
    groups = group_by_origin(load_pairs(pairs_path))
    if val_pairs_path is not None:
        val = group_by_origin(load_pairs(val_pairs_path))
        overlap = set(val) & set(groups)
        if overlap:
            raise ConfigError(
                f"{len(overlap)} origin(s) are in both the training and the validation manifest, "
                f"e.g. {sorted(overlap)[0]}; split by origin"
            )
        val_items = list(val.items())
        train_items = list(groups.items())
    else:
        origins = list(groups)
        n_val = int(round(cfg.val_fraction * len(origins)))
        perm = np.random.default_rng([cfg.seed, 7]).permutation(len(origins))
        held = set(perm[:n_val].tolist())
        val_items = [(origins[i], groups[origins[i]]) for i in sorted(held)]
        train_items = [(o, groups[o]) for i, o in enumerate(origins) if i not in held]
    if len(train_items) < 2:
        raise ConfigError(f"need at least 2 training origins, got {len(train_items)}")
    train_groups = [[o, *qs] for o, qs in train_items]
    # Sorted, so every split of the same images shares one cached latent matrix.
    images = sorted(
        _unique([p for g in train_groups for p in g] + [p for o, qs in val_items for p in (o, *qs)] + list(distractors))
    )
    return images, train_groups, val_items, list(distractors)


def _unique(paths: list[Path]) -> list[Path]:
    seen: dict[Path, None] = {}
    for p in paths:
        seen.setdefault(Path(p).resolve(), None)
    return list(seen)


def _index_split(
    paths: list[Path],
    ok: np.ndarray,
    train_groups: list[list[Path]],
    val_items: list[tuple[Path, list[Path]]],
    distractors: list[Path],
) -> _Split:
    row = {p: i for i, p in enumerate(paths)}
    members = []
    for g in train_groups:
        m = [row[p.resolve()] for p in g if ok[row[p.resolve()]]]
        if m:
            members.append(m)
    gallery: list[int] = []
    gpos: dict[int, int] = {}

    def add_gallery(i: int) -> None:
        if ok[i] and i not in gpos:
            gpos[i] = len(gallery)
            gallery.append(i)

    for o, _ in val_items:
        add_gallery(row[o.resolve()])
    # Training origins are distractors for the held-out queries (seen identities, but a wrong answer).
    for g in train_groups:
        add_gallery(row[g[0].resolve()])
    for d in distractors:
        add_gallery(row[d.resolve()])
    vq, vo = [], []
    for o, qs in val_items:
        oi = row[o.resolve()]
        if not ok[oi]:
            continue
        for q in qs:
            qi = row[q.resolve()]
            if ok[qi]:
                vq.append(qi)
                vo.append(gpos[oi])
    return _Split(paths, members, vq, vo, gallery)


def pool_rows(
    latents: np.ndarray,
    rows: Sequence[int] | np.ndarray,
    latent_shape: tuple[int, int, int],
    pool: int,
    chunk: int = 512,
) -> np.ndarray:
    """Rows of the (memory-mapped, float16) latent matrix as float32, average-pooled by ``pool``."""
    proj = Projection(np.zeros((1, 1), np.float32), pool=pool)
    rows = np.asarray(rows, dtype=np.int64)
    c, h, w = latent_shape
    out = np.empty((len(rows), c * (h // pool) * (w // pool)), np.float32)
    for s in range(0, len(rows), chunk):
        sel = np.sort(rows[s : s + chunk])
        back = np.argsort(np.argsort(rows[s : s + chunk]))
        out[s : s + len(sel)] = proj.pool_latents(np.asarray(latents[sel], dtype=np.float32), latent_shape)[back]
    return out


def _mean_direction(x: np.ndarray) -> np.ndarray:
    mu = x.mean(axis=0)
    return mu / max(float(np.linalg.norm(mu)), 1e-12)


def _cosine_metrics(queries: np.ndarray, gallery: np.ndarray, query_origin: Sequence[int]) -> dict[str, float]:
    """Retrieval metrics of ``queries`` against ``gallery`` (one origin each) by cosine similarity."""
    return single_origin_metrics(l2_normalise(queries) @ l2_normalise(gallery).T, query_origin)


def _gather(latents: np.ndarray, rows: Sequence[int]) -> np.ndarray:
    """Rows of the (memory-mapped) latent matrix as float32 in the order asked; read in sorted order."""
    return np.asarray(latents[np.sort(rows)], np.float32)[np.argsort(np.argsort(rows))]


@dataclass
class Validation:
    """Held-out queries and their gallery, pooled once: the validation features are fixed."""

    queries: np.ndarray
    gallery: np.ndarray
    query_origin: list[int]

    def score(self, w: np.ndarray) -> dict[str, float]:
        """Retrieval metrics of the held-out queries under the projection ``w``."""
        return _cosine_metrics(self.queries @ w, self.gallery @ w, self.query_origin)


@dataclass
class TrainData:
    """Pooled training features with their identities, and the validation set when there is one."""

    latents: np.ndarray
    split: _Split
    pooled_shape: tuple[int, int, int]
    x: np.ndarray
    labels: np.ndarray
    #: per training identity: row indices into ``x``
    members: list[list[int]]
    val: Validation | None
    #: unit mean direction of ``x`` that W is kept orthogonal to (``center=True``), else None
    center_dir: np.ndarray | None

    def finish_w(self, w: np.ndarray) -> np.ndarray:
        """``w`` made orthogonal to the centring direction when centring."""
        return remove_direction(w, self.center_dir) if self.center_dir is not None else w


def load_data(
    pairs_path: Path,
    val_path: Path | None,
    distractors: Sequence[str | os.PathLike],
    encoder: LatentEncoder,
    cfg: TrainConfig,
    cache_dir: Path,
    latent_cache: LatentCache | None,
    progress: bool,
    log: Callable[[str], None],
) -> TrainData:
    """Split the manifests by origin, cache their latents and pool the training and validation features."""
    shape = encoder.latent_shape
    if shape[1] % cfg.pool or shape[2] % cfg.pool:
        raise ConfigError(f"pool={cfg.pool} does not divide the latent {shape}")
    paths, train_groups, val_items, dis = _build_split(pairs_path, val_path, [Path(d) for d in distractors], cfg)
    latents, ok = cache_latents(paths, encoder, cache_dir, latent_cache=latent_cache, progress=progress)
    split = _index_split(paths, ok, train_groups, val_items, dis)
    if len(split.members) < 2:
        raise ConfigError("fewer than 2 training origins have readable images")
    rows = np.array([i for m in split.members for i in m])
    labels = np.array([c for c, m in enumerate(split.members) for _ in m])
    x = pool_rows(latents, rows, shape, cfg.pool)
    local = {r: j for j, r in enumerate(rows.tolist())}
    log(
        f"training identities {len(split.members)} ({len(rows)} images, "
        f"{latents.shape[0] - int(ok.sum())} unreadable), "
        f"validation queries {len(split.val_queries)} vs gallery {len(split.val_gallery)}; W {x.shape[1]}x{cfg.out_dim}"
    )
    val = None
    if split.val_queries:
        val = Validation(
            pool_rows(latents, split.val_queries, shape, cfg.pool),
            pool_rows(latents, split.val_gallery, shape, cfg.pool),
            split.val_query_origin,
        )
    return TrainData(
        latents,
        split,
        (shape[0], shape[1] // cfg.pool, shape[2] // cfg.pool),
        x,
        labels,
        [[local[i] for i in m] for m in split.members],
        val,
        _mean_direction(x) if cfg.center else None,
    )


def _raw_latent_metrics(latents: np.ndarray, split: _Split) -> dict[str, float]:
    """Validation metrics of the unpooled latent (its features are large: read here and dropped on return)."""
    queries, gallery = _gather(latents, split.val_queries), _gather(latents, split.val_gallery)
    return _cosine_metrics(queries, gallery, split.val_query_origin)


def validation_baselines(
    data: TrainData, w0: np.ndarray, cfg: TrainConfig, log: Callable[[str], None]
) -> dict[str, dict[str, float]]:
    """Validation metrics of the raw latent, the pooled latent and the initial W (none without validation)."""
    if data.val is None:
        return {}
    baselines = {
        "raw_latent": _raw_latent_metrics(data.latents, data.split),
        f"raw_pool{cfg.pool}": _cosine_metrics(data.val.queries, data.val.gallery, data.val.query_origin),
        f"init_{cfg.init}": data.val.score(w0),
    }
    for name, m in baselines.items():
        log(f"validation baseline {name}: top1 {m['top1']:.3f} mAP {m['mAP']:.3f}")
    return baselines
