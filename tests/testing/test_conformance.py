"""The shipped conformance checks, run on the built-in encoders and stores, and shown to catch violations."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest

from id2_plugin.embedders.base import Embedder
from id2_plugin.testing import check_embedder, check_latent_encoder, check_reference_store, synthetic_images


@pytest.fixture(scope="module")
def taef2_64(shared_dir: Path):
    """The real TAEF2 encoder at 64 px (cheap: the checks run a dozen forward passes)."""
    from id2_plugin.embedders.taesd import TAEF2Encoder

    return TAEF2Encoder(weights=shared_dir / "models" / "taef2", input_size=64, device="cpu", batch_size=4)


def test_taef2_encoder_and_embedder_conform(taef2_64) -> None:
    check_latent_encoder(taef2_64)
    check_embedder(Embedder(taef2_64))


def test_sd_vae_encoder_conforms(tiny_autoencoder_kl) -> None:
    from id2_plugin.embedders.sd_vae import SDVAEEncoder

    check_latent_encoder(SDVAEEncoder(model=tiny_autoencoder_kl, input_size=64, device="cpu", batch_size=2))


def test_a_sampling_encoder_is_caught(taef2_64, shared_dir: Path) -> None:
    """An encoder that samples the latent (the reference code's mistake) fails the determinism check."""
    import torch

    class Sampling(type(taef2_64)):  # type: ignore[misc]
        def _encode_batch(self, x):  # noqa: ANN001, ANN202
            z = super()._encode_batch(x)
            return z + 0.1 * torch.randn_like(z)

    enc = Sampling(weights=shared_dir / "models" / "taef2", input_size=64, device="cpu", batch_size=4)
    with pytest.raises(AssertionError, match="not deterministic"):
        check_latent_encoder(enc)


@pytest.mark.parametrize("index", ["flat", "flat_fp16", "hnsw"])
def test_faiss_store_conforms(tmp_path: Path, index: str) -> None:
    from id2_plugin.stores.faiss_store import FaissStore

    check_reference_store(functools.partial(FaissStore, index=index), tmp_path / "store")


def test_qdrant_store_conforms(tmp_path: Path) -> None:
    pytest.importorskip("qdrant_client")
    from id2_plugin.stores.qdrant_store import QdrantStore

    check_reference_store(QdrantStore, tmp_path / "qdrant")


def test_a_store_that_forgets_removals_is_caught(tmp_path: Path) -> None:
    from id2_plugin.stores.faiss_store import FaissStore

    class Forgetful(FaissStore):
        def remove(self, keys):  # noqa: ANN001, ANN202
            return len([k for k in keys if k != "no-such-reference"])  # claims success, removes nothing

    with pytest.raises(AssertionError, match="removed references"):
        check_reference_store(Forgetful, tmp_path / "store")


def test_a_store_that_ignores_k_is_caught(tmp_path: Path) -> None:
    from id2_plugin.stores.faiss_store import FaissStore

    class Greedy(FaissStore):
        def query(self, vectors, k=5, threshold=None):  # noqa: ANN001, ANN202
            return super().query(vectors, k=k + 1, threshold=threshold)

    with pytest.raises(AssertionError, match="expected 4 matches"):
        check_reference_store(Greedy, tmp_path / "store")


def test_synthetic_images_are_deterministic_and_distinct() -> None:
    a, b = synthetic_images(3, 64), synthetic_images(3, 64)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert all(x.shape == (64, 64, 3) and x.dtype == np.uint8 for x in a)
    assert not np.array_equal(a[0], a[1]) and not np.array_equal(a[1], a[2])


def test_reupload_copy_is_a_colour_shifted_jpeg_of_the_photo(photo_paths) -> None:
    from PIL import Image

    from id2_plugin.testing import reupload_jpeg, reupload_pixels

    path = photo_paths[3]
    rgb = np.asarray(Image.open(path).convert("RGB"))
    data = reupload_jpeg(path)
    assert data[:2] == b"\xff\xd8" and data == reupload_jpeg(rgb)  # file or pixels: the same copy
    out = reupload_pixels(rgb).astype(np.int16)
    assert out.shape == rgb.shape
    shift = (out - rgb.astype(np.int16)).reshape(-1, 3).mean(axis=0)
    assert shift[0] > 10 and shift[2] < -7 and abs(shift[1]) < 3  # red up, blue down, green kept
