"""Train the linear projection W on (edited query, origin) pairs, as the ID2 reference implementation does.

Each origin is one identity; its queries and the origin itself are its members. A batch holds ``P``
identities x ``K`` members (PK sampling, ``K = 4``). The embedding is ``normalize(z @ W)`` of the cached
VAE latent ``z`` (optionally average-pooled, see :attr:`TrainConfig.pool`), classified over the training
identities by a CosFace head (``s = 64``, ``m = 0.35``, L2-normalised class weights). Adam at ``3.5e-4``
with linear warm-up then cosine decay; an exponential moving average (EMA) of W is what gets evaluated and
saved. Only W is kept: the class weights are a training device.

Beyond the reference, and measurable through :class:`TrainConfig`:

* ``init="lda"`` / ``"pca"`` starts W from a closed-form solution (PCA-whitening, or PCA + LDA: whiten
  the query-minus-origin scatter, then keep the directions separating origins) instead of random;
  with few identities CosFace from random overfits, while a good start only needs fine-tuning.
* ``center=True`` keeps W orthogonal to the mean latent, which makes ``z @ W == (z - mean) @ W``:
  centring without a bias term, so the saved W stays a plain matrix.
* ``anchor`` > 0 penalises the distance of W from its closed-form start (a prior, against overfitting).
* a validation split *by origin* is scored every epoch (top-1 / mAP of held-out queries among held-out
  origins + distractors), next to the raw latent on the same set, and the best epoch is kept
  (early stopping with ``patience``).

Training state is checkpointed every epoch as safetensors + JSON (no pickle); ``resume=True`` continues
an interrupted run and ends with the same W as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._lazy import require
from ..cache import LatentCache
from ..embedders.base import LatentEncoder, Projection, l2_normalise
from ..errors import ConfigError
from ..pairs import group_by_origin, load_pairs, manifest_digest
from .latents import cache_latents

INITS = ("random", "pca", "lda")


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of :func:`train_projection` (defaults: the reference recipe, plus our measured choices)."""

    out_dim: int = 512
    #: average-pool the latent spatially by this factor before W (2: 32x32x32 -> 32x16x16 = 8192 inputs)
    pool: int = 2
    epochs: int = 30
    #: identities (P) and members per identity (K) in a batch
    ids_per_batch: int = 32
    k: int = 4
    #: batches per epoch; None = one pass over the training identities
    steps_per_epoch: int | None = None
    lr: float = 3.5e-4
    weight_decay: float = 0.0
    warmup_epochs: int = 2
    ema_decay: float = 0.995
    scale: float = 64.0
    margin: float = 0.35
    #: starting point of W: "random" (the reference), "pca" (PCA-whitening) or "lda" (PCA + LDA)
    init: str = "lda"
    #: PCA subspace kept before LDA, and the whitening regulariser (fraction of the mean eigenvalue). A strong
    #: regulariser (10) keeps more of the raw latent's geometry: measured on TAEF2 proxies, 0.1 gave the best
    #: proxy mAP but lost a quarter of the raw latent's top-1 on strong crops; 10 is not below it anywhere.
    init_rank: int = 1024
    whiten_eps: float = 10.0
    center: bool = True
    #: latent-space augmentation of training batches: random erasing of a block of latent cells
    augment: bool = True
    #: weight of ``||W - W_init||^2 / ||W_init||^2`` added to the loss: keeps W near the closed-form start
    anchor: float = 0.0
    #: origins held out for validation when no validation manifest is given (0 = no validation)
    val_fraction: float = 0.15
    #: stop after this many epochs without a better validation mAP (0 = never stop early)
    patience: int = 0
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise ConfigError(f"init={self.init!r} must be one of {', '.join(INITS)}")
        for name in ("out_dim", "pool", "epochs", "ids_per_batch", "k"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 1")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction={self.val_fraction} must be in [0, 1)")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay={self.ema_decay} must be in [0, 1)")

    def schedule_key(self) -> dict[str, Any]:
        """The fields a resumed run must share with the checkpoint (everything but the device)."""
        d = dataclasses.asdict(self)
        d.pop("device")
        return d


@dataclass
class TrainResult:
    """What :func:`train_projection` produced."""

    projection: Projection
    path: Path
    #: one dict per epoch: epoch, loss, lr, and validation top1/mAP when there is a validation split
    history: list[dict[str, Any]]
    best_epoch: int
    #: validation metrics of the saved W and of the baselines on the same split: raw latent, pooled latent, init W
    val_metrics: dict[str, dict[str, float]] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------
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
                f"{len(overlap)} origin(s) are in both the training and the validation manifest, e.g. {sorted(overlap)[0]}; "
                "split by origin"
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


# --------------------------------------------------------------------------------------------------
# closed-form initialisations
# --------------------------------------------------------------------------------------------------
def _mean_direction(x: np.ndarray) -> np.ndarray:
    mu = x.mean(axis=0)
    return mu / max(float(np.linalg.norm(mu)), 1e-12)


def remove_direction(w: np.ndarray, u: np.ndarray) -> np.ndarray:
    """``w`` with its columns made orthogonal to the unit vector ``u`` (so ``u @ w == 0``)."""
    return w - np.outer(u, u @ w)


def _pca(xc: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``rank`` principal directions (``d x r``) and variances of centred rows ``xc``."""
    torch = require("torch")
    r = min(rank, xc.shape[0] - 1, xc.shape[1])
    _, s, vh = torch.linalg.svd(torch.from_numpy(xc.astype(np.float64)), full_matrices=False)
    var = (s[:r] ** 2 / max(1, xc.shape[0] - 1)).numpy()
    return vh[:r].T.numpy(), var


def init_projection(
    x: np.ndarray, labels: np.ndarray, *, kind: str, out_dim: int, rank: int = 1024, eps: float = 0.1, seed: int = 0
) -> np.ndarray:
    """A closed-form starting W (``in_dim x out_dim``, float32) from training features ``x`` with identity ``labels``.

    ``pca``: project on the top principal directions, whitened (variance regularised by ``eps`` times the
    mean kept variance). ``lda``: in the top-``rank`` PCA subspace, whiten the within-identity scatter
    (member minus identity mean), then keep the ``out_dim`` directions of largest between-identity
    variance. ``random``: Gaussian with std ``1/sqrt(in_dim)`` (the reference start).
    """
    d = x.shape[1]
    if kind == "random":
        return (np.random.default_rng([seed, 11]).standard_normal((d, out_dim)) / math.sqrt(d)).astype(np.float32)
    mu = x.mean(axis=0, keepdims=True)
    xc = x - mu
    if kind == "pca":
        u, var = _pca(xc, out_dim)
        w = u / np.sqrt(var + eps * var.mean())[None, :]
    elif kind == "lda":
        u, var = _pca(xc, max(rank, out_dim))
        y = xc @ u  # n x r
        classes, inv = np.unique(labels, return_inverse=True)
        means = np.zeros((len(classes), y.shape[1]))
        np.add.at(means, inv, y)
        means /= np.bincount(inv)[:, None]
        within = y - means[inv]
        sw = within.T @ within / max(1, len(y) - len(classes))
        evals, evecs = np.linalg.eigh(sw)
        evals = np.maximum(evals, 0.0)
        whiten = evecs / np.sqrt(evals + eps * evals.mean())[None, :]
        mb = (means - means.mean(axis=0)) @ whiten
        _, s, vh = np.linalg.svd(mb, full_matrices=False)
        keep = vh[:out_dim].T
        w = u @ whiten @ keep
        if w.shape[1] < out_dim:  # fewer identities than out_dim: pad with the next whitened PCA directions
            extra = np.zeros((d, out_dim - w.shape[1]))
            w = np.concatenate([w, extra], axis=1)
    else:
        raise ConfigError(f"unknown init {kind!r}")
    # Unit average column norm: keeps Adam's absolute step size meaningful whatever the latent scale.
    w = w / max(float(np.linalg.norm(w, axis=0).mean()), 1e-12)
    return w.astype(np.float32)


# --------------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------------
def retrieval_metrics(queries: np.ndarray, gallery: np.ndarray, query_origin: Sequence[int]) -> dict[str, float]:
    """top-1 and mAP (plus micro-AP) of L2-normalised ``queries`` against ``gallery`` with one origin each."""
    from ..metrics import compute_metrics

    scores = l2_normalise(queries) @ l2_normalise(gallery).T
    pos = np.zeros(scores.shape, bool)
    pos[np.arange(len(query_origin)), np.asarray(query_origin)] = True
    m = compute_metrics(scores, pos, k=100)
    return {
        "top1": m.top1,
        "mAP": m.mAP,
        "micro_ap": m.micro_ap,
        "n_queries": m.n_queries,
        "n_references": m.n_references,
    }


# --------------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------------
def cosface_loss(embeddings: Any, class_weights: Any, labels: Any, scale: float = 64.0, margin: float = 0.35) -> Any:
    """CosFace (large-margin cosine) loss: cross-entropy of ``s * (cos(e, w_y) - m)`` against ``s * cos(e, w_j)``.

    Embeddings and class weights are L2-normalised here.
    """
    torch = require("torch")
    F = require("torch.nn.functional")
    cos = F.normalize(embeddings, dim=1) @ F.normalize(class_weights, dim=1).T
    logits = scale * (cos - margin * F.one_hot(labels, cos.shape[1]).to(cos.dtype))
    return torch.nn.functional.cross_entropy(logits, labels)


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warm-up from ``base/10`` over ``warmup`` steps, then cosine decay to ``base/100``."""
    if warmup and step < warmup:
        return base * (0.1 + 0.9 * step / warmup)
    t = (step - warmup) / max(1, total - warmup)
    return base * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def _erase(x: Any, rng: np.random.Generator, shape: tuple[int, int, int], p: float = 0.5) -> Any:
    """Replace a random block of latent cells by the sample's channel means (an object covered or replaced)."""
    c, h, w = shape
    v = x.view(len(x), c, h, w).clone()
    for i in np.flatnonzero(rng.random(len(x)) < p):
        bh, bw = int(rng.integers(h // 8 + 1, h // 2 + 1)), int(rng.integers(w // 8 + 1, w // 2 + 1))
        y0, x0 = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
        v[i, :, y0 : y0 + bh, x0 : x0 + bw] = v[i].mean(dim=(1, 2), keepdim=True)
    return v.view(len(x), -1)


def _save_checkpoint(ckpt_dir: Path, tensors: dict[str, Any], state: dict[str, Any]) -> None:
    safetensors_torch = require("safetensors.torch")
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    tmp = ckpt_dir / "checkpoint.safetensors.tmp"
    safetensors_torch.save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
    tmp_json = ckpt_dir / "checkpoint.json.tmp"
    tmp_json.write_text(json.dumps(state))
    # Tensors first, then the JSON that points at them: the JSON's epoch is never ahead of the tensors.
    os.replace(tmp, ckpt_dir / "checkpoint.safetensors")
    os.replace(tmp_json, ckpt_dir / "checkpoint.json")


def _gather(latents: np.ndarray, rows: Sequence[int]) -> np.ndarray:
    """Rows of the (memory-mapped) latent matrix as float32 in the order asked; read in sorted order."""
    return np.asarray(latents[np.sort(rows)], np.float32)[np.argsort(np.argsort(rows))]


@dataclass
class _Validation:
    """Held-out queries and their gallery, pooled once: the validation features are fixed."""

    queries: np.ndarray
    gallery: np.ndarray
    query_origin: list[int]

    def score(self, w: np.ndarray) -> dict[str, float]:
        """Retrieval metrics of the held-out queries under the projection ``w``."""
        return retrieval_metrics(self.queries @ w, self.gallery @ w, self.query_origin)


@dataclass
class _TrainData:
    """Pooled training features with their identities, and the validation set when there is one."""

    latents: np.ndarray
    split: _Split
    pooled_shape: tuple[int, int, int]
    x: np.ndarray
    labels: np.ndarray
    #: per training identity: row indices into ``x``
    members: list[list[int]]
    val: _Validation | None
    #: unit mean direction of ``x`` that W is kept orthogonal to (``center=True``), else None
    center_dir: np.ndarray | None

    def finish_w(self, w: np.ndarray) -> np.ndarray:
        """``w`` made orthogonal to the centring direction when centring."""
        return remove_direction(w, self.center_dir) if self.center_dir is not None else w


def _load_data(
    pairs_path: Path,
    val_path: Path | None,
    distractors: Sequence[str | os.PathLike],
    encoder: LatentEncoder,
    cfg: TrainConfig,
    cache_dir: Path,
    latent_cache: LatentCache | None,
    progress: bool,
    log: Callable[[str], None],
) -> _TrainData:
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
        f"training identities {len(split.members)} ({len(rows)} images, {latents.shape[0] - int(ok.sum())} unreadable), "
        f"validation queries {len(split.val_queries)} vs gallery {len(split.val_gallery)}; W {x.shape[1]}x{cfg.out_dim}"
    )
    val = None
    if split.val_queries:
        val = _Validation(
            pool_rows(latents, split.val_queries, shape, cfg.pool),
            pool_rows(latents, split.val_gallery, shape, cfg.pool),
            split.val_query_origin,
        )
    return _TrainData(
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
    return retrieval_metrics(queries, gallery, split.val_query_origin)


def _baselines(
    data: _TrainData, w0: np.ndarray, cfg: TrainConfig, log: Callable[[str], None]
) -> dict[str, dict[str, float]]:
    """Validation metrics of the raw latent, the pooled latent and the initial W (none without validation)."""
    if data.val is None:
        return {}
    baselines = {
        "raw_latent": _raw_latent_metrics(data.latents, data.split),
        f"raw_pool{cfg.pool}": retrieval_metrics(data.val.queries, data.val.gallery, data.val.query_origin),
        f"init_{cfg.init}": data.val.score(w0),
    }
    for name, m in baselines.items():
        log(f"validation baseline {name}: top1 {m['top1']:.3f} mAP {m['mAP']:.3f}")
    return baselines


class _Trainer:
    """CosFace training of W on the cached features: PK-batch steps, an EMA of W, the best epoch, checkpoints."""

    def __init__(
        self,
        data: _TrainData,
        w0: np.ndarray,
        cfg: TrainConfig,
        device: Any,
        ckpt_dir: Path,
        state_key: dict[str, Any],
        progress: bool,
        log: Callable[[str], None],
    ) -> None:
        """Set up W at ``w0``, imprinted class weights, Adam and the schedule; no epoch is run yet."""
        torch = require("torch")
        self.data, self.cfg, self.device, self.ckpt_dir, self.state_key = data, cfg, device, ckpt_dir, state_key
        self.progress, self.log = progress, log
        self.x = torch.from_numpy(data.x).to(device)
        self.w = torch.nn.Parameter(torch.from_numpy(w0.copy()).to(device))
        self.w_init = torch.from_numpy(w0).to(device)
        self.w_init_sq = float(self.w_init.pow(2).sum())
        self.cls = torch.nn.Parameter(self._imprinted_classes())
        self.opt = torch.optim.Adam([self.w, self.cls], lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.w_ema = self.w.detach().clone()
        self.best_w = self.w_ema.clone()
        self.u = torch.from_numpy(data.center_dir).to(device) if data.center_dir is not None else None
        self.steps_per_epoch = cfg.steps_per_epoch or max(1, math.ceil(len(data.members) / cfg.ids_per_batch))
        self.rng = np.random.default_rng([cfg.seed, 3])
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"epoch": 0, "mAP": -1.0, "top1": -1.0}
        self.epoch = self.global_step = self.bad_epochs = 0

    def _imprinted_classes(self) -> Any:
        """Class weights imprinted with the identities' mean embeddings under the initial W."""
        torch = require("torch")
        F = require("torch.nn.functional")
        with torch.no_grad():
            e0 = F.normalize(self.x @ self.w, dim=1)
            labels = torch.from_numpy(self.data.labels).to(self.device)
            cls0 = torch.zeros(len(self.data.members), self.cfg.out_dim, device=self.device).index_add_(0, labels, e0)
        return F.normalize(cls0, dim=1)

    def _effective(self, wt: Any) -> Any:
        """``wt`` as it is applied: orthogonal to the centring direction when centring."""
        torch = require("torch")
        return wt - torch.outer(self.u, self.u @ wt) if self.u is not None else wt

    def resume(self) -> None:
        """Continue from the checkpoint in ``ckpt_dir`` if there is one (it must share the state key)."""
        if not (self.ckpt_dir / "checkpoint.json").is_file():
            return
        state = json.loads((self.ckpt_dir / "checkpoint.json").read_text())
        if state.get("key") != self.state_key:
            raise ConfigError(
                f"checkpoint in {self.ckpt_dir} was made with other manifests, encoder or settings; "
                "train again without --resume or restore the original settings"
            )
        tensors = require("safetensors.torch").load_file(str(self.ckpt_dir / "checkpoint.safetensors"))
        self._load_tensors(tensors, state["adam_step"])
        self.rng.bit_generator.state = state["rng"]
        self.epoch, self.global_step, self.bad_epochs = state["epoch"], state["step"], state["bad_epochs"]
        self.history, self.best = state["history"], state["best"]
        self.log(f"resumed from {self.ckpt_dir} after epoch {self.epoch}")

    def _load_tensors(self, t: dict[str, Any], adam_step: float) -> None:
        """Restore W, the class weights, the EMA, the best W and Adam's moments from checkpoint tensors."""
        torch = require("torch")
        dev = self.device
        with torch.no_grad():
            self.w.copy_(t["w"].to(dev))
            self.cls.copy_(t["cls"].to(dev))
        self.w_ema, self.best_w = t["w_ema"].to(dev), t["best_w"].to(dev)
        moments = {
            i: {
                "step": torch.tensor(float(adam_step)),
                "exp_avg": t[f"adam{i}.m"].to(dev),
                "exp_avg_sq": t[f"adam{i}.v"].to(dev),
            }
            for i in range(2)
        }
        self.opt.load_state_dict({"state": moments, "param_groups": self.opt.state_dict()["param_groups"]})

    def fit(self) -> None:
        """Run the remaining epochs, stopping after ``patience`` epochs without a better validation mAP."""
        for epoch in range(self.epoch, self.cfg.epochs):
            if self.cfg.patience and self.bad_epochs >= self.cfg.patience:
                break
            losses, lr = self._train_epoch(epoch)
            rec: dict[str, Any] = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "lr": lr}
            rec.update(self._validate(epoch + 1))
            self.history.append(rec)
            self.log(
                f"epoch {epoch + 1}: loss {rec['loss']:.4f}"
                + (f"  val top1 {rec['val_top1']:.3f} mAP {rec['val_mAP']:.3f}" if self.data.val is not None else "")
            )
            self.epoch = epoch + 1
            self._checkpoint()

    def _train_epoch(self, epoch: int) -> tuple[list[float], float]:
        """The steps of one epoch; returns their losses and the last learning rate."""
        from tqdm import tqdm

        losses = []
        bar = tqdm(
            range(self.steps_per_epoch),
            desc=f"epoch {epoch + 1}/{self.cfg.epochs}",
            unit="step",
            disable=not self.progress,
            leave=False,
        )
        for _ in bar:
            loss, lr = self._step()
            losses.append(loss)
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}")
        bar.close()
        return losses, lr

    def _step(self) -> tuple[float, float]:
        """One optimiser step on a PK batch; returns its loss and learning rate."""
        cfg = self.cfg
        xb, labels = self._sample_batch()
        lr = lr_at(
            self.global_step, self.steps_per_epoch * cfg.epochs, self.steps_per_epoch * cfg.warmup_epochs, cfg.lr
        )
        for g in self.opt.param_groups:
            g["lr"] = lr
        loss = cosface_loss(xb @ self._effective(self.w), self.cls, labels, cfg.scale, cfg.margin)
        if cfg.anchor:
            loss = loss + cfg.anchor * (self.w - self.w_init).pow(2).sum() / self.w_init_sq
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.global_step += 1
        self._update_ema()
        return float(loss.detach()), lr

    def _sample_batch(self) -> tuple[Any, Any]:
        """``ids_per_batch`` random identities x ``k`` members each (latent-erased when augmenting), with labels."""
        torch = require("torch")
        cfg, rng, n_ids = self.cfg, self.rng, len(self.data.members)
        ids = rng.choice(n_ids, size=min(cfg.ids_per_batch, n_ids), replace=False)
        idx, lab = [], []
        for c in ids:
            m = self.data.members[c]
            idx.extend(rng.choice(m, size=cfg.k, replace=len(m) < cfg.k).tolist())
            lab.extend([int(c)] * cfg.k)
        xb = self.x[torch.as_tensor(idx, device=self.device)]
        if cfg.augment:
            xb = _erase(xb, rng, self.data.pooled_shape)
        return xb, torch.as_tensor(lab, device=self.device)

    def _update_ema(self) -> None:
        """Fold the current W into its moving average."""
        torch = require("torch")
        with torch.no_grad():
            # The decay ramps up over the first steps, so the average is not stuck near the initial W.
            d = min(self.cfg.ema_decay, (1 + self.global_step) / (10 + self.global_step))
            self.w_ema.mul_(d).add_(self.w.detach(), alpha=1 - d)

    def _validate(self, epoch: int) -> dict[str, float]:
        """Score the EMA of W after ``epoch`` and keep it when best (always the latest without validation)."""
        if self.data.val is None:
            self.best, self.best_w = {"epoch": epoch}, self.w_ema.clone()
            return {}
        m = self.data.val.score(self._effective(self.w_ema).detach().cpu().numpy())
        if m["mAP"] > self.best["mAP"]:
            self.best, self.best_w, self.bad_epochs = (
                {"epoch": epoch, "mAP": m["mAP"], "top1": m["top1"]},
                self.w_ema.clone(),
                0,
            )
        else:
            self.bad_epochs += 1
        return {"val_top1": m["top1"], "val_mAP": m["mAP"]}

    def _checkpoint(self) -> None:
        """Save the whole training state after the current epoch."""
        adam = self.opt.state_dict()["state"]
        tensors = {"w": self.w.detach(), "cls": self.cls.detach(), "w_ema": self.w_ema, "best_w": self.best_w}
        for i in range(2):
            tensors[f"adam{i}.m"] = adam[i]["exp_avg"]
            tensors[f"adam{i}.v"] = adam[i]["exp_avg_sq"]
        state = {
            "key": self.state_key,
            "epoch": self.epoch,
            "step": self.global_step,
            "adam_step": float(adam[0]["step"]),
            "bad_epochs": self.bad_epochs,
            "rng": self.rng.bit_generator.state,
            "history": self.history,
            "best": self.best,
        }
        _save_checkpoint(self.ckpt_dir, tensors, state)

    def final_w(self, save_dtype: str) -> np.ndarray:
        """The best W as the file will hold it: rounded through ``save_dtype``, so reported metrics are the file's."""
        return self._effective(self.best_w).detach().cpu().numpy().astype(save_dtype).astype(np.float32)


def _metadata(
    encoder: LatentEncoder,
    cfg: TrainConfig,
    digests: dict[str, str | None],
    history: list[dict[str, Any]],
    val_metrics: dict[str, dict[str, float]],
    best_epoch: int,
) -> dict[str, str]:
    """The metadata saved with W: what it was trained from and how, and how it scored."""
    return {
        "embedder_name": encoder.name,
        "embedder": encoder.identity,
        "latent_shape": json.dumps(list(encoder.latent_shape)),
        "scaling": "none",
        "manifest_digest": digests["manifest"],
        "val_manifest_digest": digests["val_manifest"] or "",
        "seed": str(cfg.seed),
        "loss_curve": json.dumps([round(h["loss"], 5) for h in history]),
        "val_history": json.dumps(
            [{k: (round(v, 5) if isinstance(v, float) else v) for k, v in h.items()} for h in history]
        ),
        "val_metrics": json.dumps(val_metrics),
        "best_epoch": str(best_epoch),
        "train_config": json.dumps(cfg.schedule_key(), sort_keys=True),
        "trainer": "id2_plugin.train.trainer/cosface",
    }


def train_projection(
    pairs_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    **kwargs: Any,
) -> TrainResult:
    """Train W on the pairs manifest and save it (see the module docstring and :func:`_train_projection`).

    ``cache_dir`` holds the memory-mapped latent matrix and is kept; without it the matrix lives in a
    temporary folder beside ``out_path`` that is deleted when training ends, even on error, because
    latents decode back into the training images.
    """
    if cache_dir is not None:
        return _train_projection(pairs_path, out_path, cache_dir=cache_dir, **kwargs)
    parent = Path(out_path).parent
    parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"{Path(out_path).name}.latents-", dir=parent) as work:
        return _train_projection(pairs_path, out_path, cache_dir=work, **kwargs)


def _train_projection(
    pairs_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    encoder: LatentEncoder,
    config: TrainConfig = TrainConfig(),
    val_pairs_path: str | os.PathLike | None = None,
    distractors: Sequence[str | os.PathLike] = (),
    cache_dir: str | os.PathLike,
    latent_cache: LatentCache | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    save_dtype: str = "float16",
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train W on the pairs manifest and save it (see the module docstring for the recipe).

    ``cache_dir`` holds the memory-mapped latent matrix; ``checkpoint_dir``
    the per-epoch training state (default: ``<out_path>.ckpt``). With ``resume=True`` an existing checkpoint
    is continued (it must come from the same manifests, encoder and configuration).
    """
    from ..embedders.base import select_device

    cfg = config
    out_path, pairs_path = Path(out_path), Path(pairs_path)
    val_path = Path(val_pairs_path) if val_pairs_path is not None else None
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else out_path.with_name(out_path.name + ".ckpt")
    cache_dir = Path(cache_dir)
    device, _ = select_device(cfg.device, "float32")
    data = _load_data(pairs_path, val_path, distractors, encoder, cfg, cache_dir, latent_cache, progress, log)
    digests = {"manifest": manifest_digest(pairs_path), "val_manifest": manifest_digest(val_path) if val_path else None}
    w0 = data.finish_w(
        init_projection(
            data.x,
            data.labels,
            kind=cfg.init,
            out_dim=cfg.out_dim,
            rank=cfg.init_rank,
            eps=cfg.whiten_eps,
            seed=cfg.seed,
        )
    )
    baselines = _baselines(data, w0, cfg, log)
    state_key = {"config": cfg.schedule_key(), "encoder": encoder.identity, **digests}
    trainer = _Trainer(data, w0, cfg, device, ckpt_dir, state_key, progress, log)
    if resume:
        trainer.resume()
    trainer.fit()
    final = trainer.final_w(save_dtype)
    val_metrics = dict(baselines)
    if data.val is not None:
        val_metrics["W"] = data.val.score(final)
    meta = _metadata(encoder, cfg, digests, trainer.history, val_metrics, int(trainer.best["epoch"]))
    path = Projection(final, metadata=meta, pool=cfg.pool).save(out_path, dtype=save_dtype)
    return TrainResult(Projection.load(path), path, trainer.history, int(trainer.best["epoch"]), val_metrics)
