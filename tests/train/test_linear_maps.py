"""Closed-form maps and grouped folds, on real TAEF2 latents of real photos and real edits."""

from __future__ import annotations

import numpy as np
import pytest

from id2_plugin.train.crossval import grouped_folds, origin_groups
from id2_plugin.train.linear_maps import cosface_correction, embed, pair_whitening, pca_whitening

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def photo_latents(latent_cache, photo_paths):
    # pool 4 (32 x 8 x 8 = 2048 values) keeps the maps small; the recipes are the same at any pool
    z = latent_cache.encode(photo_paths[:120])
    return z.reshape(len(z), 32, 8, 4, 8, 4).mean(axis=(3, 5)).reshape(len(z), -1)


def test_pca_whitening_whitens_the_photos_it_was_fitted_on(photo_latents):
    mean, w = pca_whitening(photo_latents, rank=40, eps=0.0, power=0.5)
    y = (photo_latents - mean) @ w
    cov = np.cov(y.T)
    # eps 0: every kept direction has the same variance and they are uncorrelated
    assert np.allclose(np.diag(cov), np.diag(cov).mean(), rtol=1e-3)
    assert np.abs(cov - np.diag(np.diag(cov))).max() < 1e-3 * np.diag(cov).mean()
    assert np.allclose(np.linalg.norm(w, axis=0).mean(), 1.0, atol=1e-5)


def test_pca_power_zero_is_a_rotation_that_keeps_distances_in_the_subspace(photo_latents):
    mean, w = pca_whitening(photo_latents, rank=119, eps=1.0, power=0.0)
    y = (photo_latents - mean) @ w
    # with every direction kept (rank n-1) a plain rotation keeps all pairwise distances of the centred data
    d_in = np.linalg.norm(photo_latents[:10, None] - photo_latents[None, :10], axis=2)
    d_out = (
        np.linalg.norm(y[:10, None] - y[None, :10], axis=2) * np.linalg.norm(w, axis=0).mean() / np.linalg.norm(w[:, 0])
    )
    assert np.allclose(d_in, d_out, rtol=1e-3, atol=1e-3)


def test_pair_whitening_shrink_one_is_the_pca_map_and_lower_shrink_discounts_edits(photo_latents, rng):
    mean, w0 = pca_whitening(photo_latents, rank=60, eps=0.1)
    # "edits": the same photo with one block of latent cells changed
    q = photo_latents[:30].copy()
    q[:, :200] += rng.normal(0, 2.0, (30, 200)).astype(np.float32)
    assert np.allclose(pair_whitening(w0, q, photo_latents[:30], shrink=1.0), w0, atol=1e-5)
    w = pair_whitening(w0, q, photo_latents[:30], shrink=0.2)

    def gap(m):  # how far each edit moves from its origin, relative to the distance between photos
        e_q, e_o = embed(q, mean, m), embed(photo_latents[:30], mean, m)
        return float(np.mean(np.sum(e_q * e_o, axis=1)) - np.mean(e_q @ e_o.T))

    assert gap(w) > gap(w0)


def test_cosface_correction_moves_less_with_a_stronger_anchor(photo_latents, rng):
    mean, w0 = pca_whitening(photo_latents, rank=32, eps=0.1)
    x = np.concatenate(
        [photo_latents[:20], photo_latents[:20] + rng.normal(0, 1.0, (20, photo_latents.shape[1])).astype(np.float32)]
    )
    labels = np.concatenate([np.arange(20), np.arange(20)])
    loose = cosface_correction(x, labels, mean, w0, anchor=0.01, steps=30, lr=1e-2)
    tight = cosface_correction(x, labels, mean, w0, anchor=100.0, steps=30, lr=1e-2)
    assert np.linalg.norm(tight - w0) < np.linalg.norm(loose - w0)
    assert loose.shape == w0.shape


def test_origin_groups_join_copies_and_keep_unrelated_photos_apart(latent_cache, photo_paths, degraded_copy):
    z_photos = latent_cache.encode(photo_paths[:6])
    copy = latent_cache.encode([degraded_copy(photo_paths[2], 0)])
    groups = origin_groups(np.concatenate([z_photos, copy]))
    assert groups[6] == groups[2]
    assert len(set(groups[:6].tolist())) == 6


def test_grouped_folds_never_split_a_group_and_balance_queries():
    groups = [0, 0, 0, 1, 2, 2, 3, 4, 5, 5, 6, 7, 8, 9]
    folds = grouped_folds(groups, 3, seed=1)
    for g in set(groups):
        assert len({int(folds[i]) for i, x in enumerate(groups) if x == g}) == 1
    counts = np.bincount(folds, minlength=3)
    assert counts.max() - counts.min() <= 2
    with pytest.raises(ValueError, match="cannot fill"):
        grouped_folds([0, 0, 1], 3)
