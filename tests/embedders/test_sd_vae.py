"""SD ``AutoencoderKL`` path on a tiny randomly initialised model (no SD weights exist offline)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from id2_plugin.assembly import build_embedder
from id2_plugin.config import EmbedderConfig
from id2_plugin.embedders.base import Embedder, Projection, select_device
from id2_plugin.embedders.sd_vae import SDVAEEncoder
from id2_plugin.errors import ConfigError, ModelNotFoundError


@pytest.fixture(scope="module")
def vae_dir(tiny_autoencoder_kl, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("sd") / "model"
    tiny_autoencoder_kl.save_pretrained(d / "vae")  # a diffusers pipeline folder layout
    return d


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)


def test_local_folder_shape_and_mean_latent(vae_dir: Path, images: np.ndarray) -> None:
    enc = SDVAEEncoder(weights=vae_dir, input_size=64, device="cpu")
    assert enc.latent_shape == (4, 32, 32)  # two blocks -> downsample 2; SD2 (4 blocks) gives 4x32x32 at 256
    z1, z2 = enc.encode_arrays(images), enc.encode_arrays(images)
    np.testing.assert_array_equal(z1, z2)  # latent_dist.mean, never a sample
    with torch.inference_mode():
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
        expected = enc.model.encode(x).latent_dist.mean.reshape(3, -1).numpy()
    np.testing.assert_allclose(z1, expected, atol=1e-4)


def test_projection_applied(vae_dir: Path, images: np.ndarray, tmp_path: Path) -> None:
    enc = SDVAEEncoder(weights=vae_dir, input_size=64, device="cpu")
    w = np.random.default_rng(1).standard_normal((enc.latent_dim, 16)).astype(np.float32)
    path = Projection(w, {"embedder_name": "sd-vae", "scaling": "none"}).save(tmp_path / "w.safetensors")
    proj = Projection.load(path)
    assert proj.metadata["embedder_name"] == "sd-vae" and proj.out_dim == 16
    emb = Embedder(enc, proj)
    out = emb.embed_arrays(images)
    raw = enc.encode_arrays(images) @ w
    np.testing.assert_allclose(out, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-5)
    assert emb.identity != Embedder(enc, None).identity and emb.dim == 16


def test_projection_mismatch_fails_at_startup(vae_dir: Path) -> None:
    enc = SDVAEEncoder(weights=vae_dir, input_size=64, device="cpu")
    with pytest.raises(ConfigError, match="expects 10-dim"):
        Embedder(enc, Projection(np.zeros((10, 4), np.float32)))
    with pytest.raises(ConfigError, match="trained for embedder 'taef2'"):
        Embedder(enc, Projection(np.zeros((enc.latent_dim, 4), np.float32), {"embedder_name": "taef2"}))


def test_build_from_config(vae_dir: Path) -> None:
    emb = build_embedder(
        EmbedderConfig(
            name="sd-vae", weights=str(vae_dir), input_size=64, projection="none", allow_raw_latent=True, device="cpu"
        )
    )
    assert emb.encoder.name == "sd-vae" and emb.dim == 4 * 32 * 32


def test_unknown_model_is_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="AutoencoderKL"):
        SDVAEEncoder(weights=tmp_path / "empty", device="cpu")


def test_device_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    assert select_device("cpu") == (torch.device("cpu"), torch.float32)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    dev, dt = select_device("auto")
    assert dev.type == "cuda" and dt == torch.float16  # the GPU path picks fp16
    assert select_device("cuda:1", "bfloat16") == (torch.device("cuda:1"), torch.bfloat16)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device("auto")[0].type == "cpu"
    with pytest.raises(ConfigError, match="CUDA is not available"):
        select_device("cuda")
    with pytest.raises(ConfigError, match="dtype"):
        select_device("cpu", "int8")


def test_half_precision_path_runs(tiny_autoencoder_kl, images: np.ndarray) -> None:
    """The dtype the GPU path uses also works on CPU (bfloat16), close to fp32."""
    e32 = SDVAEEncoder(model=tiny_autoencoder_kl, input_size=64, device="cpu", dtype="float32")
    z32 = e32.encode_arrays(images)
    e16 = SDVAEEncoder(model=copy.deepcopy(tiny_autoencoder_kl), input_size=64, device="cpu", dtype="bfloat16")
    z16 = e16.encode_arrays(images)
    assert z16.dtype == np.float32
    assert np.corrcoef(z32.ravel(), z16.ravel())[0, 1] > 0.99


@pytest.mark.gpu
def test_cuda_fp16(tiny_autoencoder_kl, images: np.ndarray) -> None:
    enc = SDVAEEncoder(model=copy.deepcopy(tiny_autoencoder_kl), input_size=64, device="cuda")
    assert enc.dtype == torch.float16
    assert np.isfinite(enc.encode_arrays(images)).all()
