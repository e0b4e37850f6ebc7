"""CosFace training of W on pooled latent features: the loss, the schedule, the epoch loop, checkpoints.

A batch holds ``P`` identities x ``K`` members (PK sampling). The embedding ``normalize(x @ W)`` is
classified over the training identities by a CosFace head whose class weights start imprinted with the
identities' mean embeddings. Adam with linear warm-up then cosine decay; an exponential moving average
(EMA) of W is what gets validated and kept. The whole state is checkpointed every epoch as safetensors +
JSON (no pickle), so a resumed run ends with the same W as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .._lazy import require
from ..errors import ConfigError
from .train_config import TrainConfig
from .train_data import TrainData


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


class CosFaceTrainer:
    """CosFace training of W on the cached features: PK-batch steps, an EMA of W, the best epoch, checkpoints."""

    def __init__(
        self,
        data: TrainData,
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
