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

This module is the use case, :func:`train_projection`: its pieces are the settings
(:mod:`.train_config`), the data (:mod:`.train_data`), the closed-form start (:func:`.linear_maps.init_projection`)
and the CosFace loop (:mod:`.cosface`).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..cache import LatentCache
from ..embedders.base import LatentEncoder, Projection, select_device
from ..pairs import manifest_digest
from .cosface import CosFaceTrainer
from .linear_maps import init_projection
from .train_config import TrainConfig
from .train_data import load_data, validation_baselines


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
    cfg = config
    out_path, pairs_path = Path(out_path), Path(pairs_path)
    val_path = Path(val_pairs_path) if val_pairs_path is not None else None
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else out_path.with_name(out_path.name + ".ckpt")
    cache_dir = Path(cache_dir)
    device, _ = select_device(cfg.device, "float32")
    data = load_data(pairs_path, val_path, distractors, encoder, cfg, cache_dir, latent_cache, progress, log)
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
    baselines = validation_baselines(data, w0, cfg, log)
    state_key = {"config": cfg.schedule_key(), "encoder": encoder.identity, **digests}
    trainer = CosFaceTrainer(data, w0, cfg, device, ckpt_dir, state_key, progress, log)
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
