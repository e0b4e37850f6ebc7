"""Closed-form linear maps of the latent that start from, and stay near, an information-preserving map.

With a hundred or so real edit pairs, 8192 x 512 numbers cannot be fitted freely: a W learned from them
(or from proxy edits) forgets what the raw latent knew. These maps are built so that they cannot forget
much:

* :func:`pca_whitening` is unsupervised: centre, keep the top principal directions of *unlabelled*
  photos, and rescale them towards equal variance (``power`` 0.5 = whitening, 0 = plain PCA rotation;
  ``eps`` regularises small variances). Nothing about edits is learned, so nothing real editors need is lost.
* :func:`pair_whitening` adds what real pairs teach, shrunk toward the PCA map: in the whitened space, the
  scatter of (edited - origin) differences is what an edit changes; dividing it out (shrunk toward the
  identity by ``shrink``) discounts those directions. ``shrink=1`` gives back the PCA map exactly.
* :func:`cosface_correction` fine-tunes any start with CosFace over origin identities while penalising the
  distance from the start (``anchor``); the paper's plain CosFace W is the same loss from a random start
  without the anchor (:mod:`id2_plugin.train.trainer`).
* :func:`init_projection` is that trainer's closed-form start (PCA-whitening, or PCA + LDA over origin
  identities); the trainer centres with :func:`remove_direction` instead of a mean, so it returns W alone.

Every other map is ``(mean, W)``: the embedding is ``normalize((pool(z) - mean) @ W)``.
"""

from __future__ import annotations

import math

import numpy as np

from .._lazy import require
from ..errors import ConfigError


def _pca(xc: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``rank`` principal directions (``d x r``) and variances of centred rows ``xc``.

    Through the smaller scatter matrix: ``n x n`` (Gram) for a few hundred photos of thousands of numbers,
    ``d x d`` (covariance) when W is trained on more images than the latent has numbers.
    """
    n, d = xc.shape
    r = min(rank, n - 1, d)
    x = xc.astype(np.float64)
    gram = n <= d
    evals, evecs = np.linalg.eigh((x @ x.T if gram else x.T @ x) / max(1, n - 1))
    order = np.argsort(evals)[::-1][:r]
    var = np.maximum(evals[order], 1e-12)
    # From the Gram matrix, the right singular vectors come from the left ones: v = X^T u / sqrt((n-1) var).
    u = (x.T @ evecs[:, order]) / np.sqrt(var * max(1, n - 1))[None, :] if gram else evecs[:, order]
    return u.astype(np.float32), var.astype(np.float32)


def pca_whitening(
    x: np.ndarray, *, rank: int = 512, eps: float = 1.0, power: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, W)``: PCA of unlabelled rows ``x`` (n x d).

    ``rank`` directions, scaled by ``(var + eps*mean var)^-power``.
    The columns are scaled so that their average norm is 1 (keeps score scales comparable across maps).
    """
    if not 0.0 <= power <= 1.0:
        raise ValueError(f"power={power} must be in [0, 1]")
    mean = x.mean(axis=0).astype(np.float32)
    u, var = _pca(x - mean, rank)
    w = u / np.power(var + eps * var.mean(), power)[None, :]
    return mean, _unit_columns(w)


def pair_whitening(
    w0: np.ndarray, query: np.ndarray, origin: np.ndarray, *, shrink: float = 0.5, weights: np.ndarray | None = None
) -> np.ndarray:
    """W = ``w0 @ S^(-1/2)`` where ``S`` is the (weighted) scatter of ``(query - origin) @ w0``, shrunk to the identity.

    ``S = (1 - shrink) * C / mean(diag C) + shrink * I``. The centring mean cancels in the differences, so
    the corrected map keeps the mean of ``w0``.
    """
    if not 0.0 <= shrink <= 1.0:
        raise ValueError(f"shrink={shrink} must be in [0, 1]")
    d = (query - origin) @ w0
    wts = np.ones(len(d)) if weights is None else np.asarray(weights, np.float64)
    c = (d.T * wts) @ d / max(float(wts.sum()), 1e-12)
    c = c / max(float(np.mean(np.diag(c))), 1e-12)
    s = (1.0 - shrink) * c + shrink * np.eye(len(c))
    evals, evecs = np.linalg.eigh(s)
    inv_sqrt = (evecs / np.sqrt(np.maximum(evals, 1e-9))[None, :]) @ evecs.T
    return _unit_columns(w0 @ inv_sqrt)


def cosface_correction(
    x: np.ndarray,
    labels: np.ndarray,
    mean: np.ndarray,
    w0: np.ndarray,
    *,
    anchor: float = 1.0,
    steps: int = 200,
    lr: float = 1e-3,
    scale: float = 64.0,
    margin: float = 0.35,
    sample_weights: np.ndarray | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Fine-tune ``w0`` with CosFace over the identities ``labels`` of rows ``x``.

    The loss adds ``anchor * ||W - w0||^2 / ||w0||^2``.

    Full-batch Adam (the real-pair sets are small); ``sample_weights`` weight each row's loss (e.g. real
    pairs above proxy pairs). Class weights start at the identities' mean embeddings under ``w0``.
    """
    torch = require("torch")
    F = require("torch.nn.functional")

    torch.manual_seed(seed)
    xt = torch.from_numpy(np.ascontiguousarray(x - mean, dtype=np.float32))
    classes, inv = np.unique(labels, return_inverse=True)
    y = torch.from_numpy(inv.astype(np.int64))
    sw = torch.ones(len(x)) if sample_weights is None else torch.from_numpy(np.asarray(sample_weights, np.float32))
    w_init = torch.from_numpy(np.ascontiguousarray(w0, dtype=np.float32))
    w = torch.nn.Parameter(w_init.clone())
    with torch.no_grad():
        e0 = F.normalize(xt @ w_init, dim=1)
        cls0 = torch.zeros(len(classes), w0.shape[1]).index_add_(0, y, e0)
    cls = torch.nn.Parameter(F.normalize(cls0, dim=1))
    opt = torch.optim.Adam([w, cls], lr=lr)
    norm = float(w_init.pow(2).sum())
    for _ in range(steps):
        cos = F.normalize(xt @ w, dim=1) @ F.normalize(cls, dim=1).T
        logits = scale * (cos - margin * F.one_hot(y, len(classes)).to(cos.dtype))
        per_row = F.cross_entropy(logits, y, reduction="none")
        loss = (per_row * sw).sum() / sw.sum() + anchor * (w - w_init).pow(2).sum() / norm
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return _unit_columns(w.detach().numpy())


def remove_direction(w: np.ndarray, u: np.ndarray) -> np.ndarray:
    """``w`` with its columns made orthogonal to the unit vector ``u`` (so ``u @ w == 0``)."""
    return w - np.outer(u, u @ w)


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
    xc = x - x.mean(axis=0, keepdims=True)
    if kind == "pca":
        u, var = _pca(xc, out_dim)
        w = u / np.sqrt(var + eps * var.mean())[None, :]
    elif kind == "lda":
        w = _lda(xc, labels, out_dim, rank, eps)
    else:
        raise ConfigError(f"unknown init {kind!r}")
    # Unit average column norm: keeps Adam's absolute step size meaningful whatever the latent scale.
    return _unit_columns(w)


def _lda(xc: np.ndarray, labels: np.ndarray, out_dim: int, rank: int, eps: float) -> np.ndarray:
    """PCA + LDA directions of centred rows ``xc`` (see :func:`init_projection`), ``out_dim`` columns."""
    u, _ = _pca(xc, max(rank, out_dim))
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
    _, _, vh = np.linalg.svd(mb, full_matrices=False)
    w = u @ whiten @ vh[:out_dim].T
    if w.shape[1] < out_dim:  # fewer identities than out_dim: pad with zero columns
        w = np.concatenate([w, np.zeros((xc.shape[1], out_dim - w.shape[1]))], axis=1)
    return w


def _unit_columns(w: np.ndarray) -> np.ndarray:
    return (w / max(float(np.linalg.norm(w, axis=0).mean()), 1e-12)).astype(np.float32)


def embed(z: np.ndarray, mean: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``normalize((z - mean) @ w)`` for already pooled latents ``z``."""
    e = (z - mean) @ w
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)


__all__ = ["cosface_correction", "embed", "init_projection", "pair_whitening", "pca_whitening", "remove_direction"]
