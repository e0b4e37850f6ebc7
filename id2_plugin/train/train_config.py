"""The hyper-parameters of W training (:class:`TrainConfig`): the reference recipe's defaults and their checks."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError

INITS = ("random", "pca", "lda")


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of :func:`~id2_plugin.train.trainer.train_projection`.

    Defaults: the reference recipe, plus our measured choices.
    """

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
