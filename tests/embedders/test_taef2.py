"""The real pretrained TAEF2 tiny VAE from ../shared/models/taef2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from id2_plugin.embedders.base import Embedder
from id2_plugin.embedders.taesd import DECODER_FILE, ENCODER_FILE, TAEF2Decoder, build_taef2
from id2_plugin.errors import ConfigError, ModelNotFoundError


@pytest.fixture(scope="module")
def images(photo_paths: list[Path], taef2_encoder) -> np.ndarray:
    return np.stack([taef2_encoder.normalise(p) for p in photo_paths[:4]])


def test_latent_shape_and_determinism(taef2_encoder, images: np.ndarray) -> None:
    z1 = taef2_encoder.encode_arrays(images)
    z2 = taef2_encoder.encode_arrays(images[::-1].copy())[::-1]
    assert z1.shape == (4, 32 * 32 * 32) and z1.dtype == np.float32
    assert taef2_encoder.latent_shape == (32, 32, 32)
    np.testing.assert_allclose(z1, z2, atol=1e-4)  # deterministic and batch-order invariant
    assert np.isfinite(z1).all() and z1.std() > 0.1


def test_round_trip_reconstructs_real_photo(taef2_encoder, images: np.ndarray) -> None:
    """Encoder + decoder of the real weights reconstruct a photo (wrong loading gives noise)."""
    z = torch.from_numpy(taef2_encoder.encode_arrays(images[:2])).reshape(2, 32, 32, 32)
    rec = TAEF2Decoder(Path(taef2_encoder.weights_path).parent / DECODER_FILE, device="cpu").decode(z)
    rec = ((rec.permute(0, 2, 3, 1).numpy() + 1) * 127.5).clip(0, 255)
    mse = ((rec - images[:2].astype(np.float32)) ** 2).mean()
    assert 10 * np.log10(255**2 / mse) > 28.0


def test_pool_branch_is_required(shared_dir: Path, tmp_path: Path) -> None:
    """Dropping the extra mid-block keys must be refused, not silently loaded."""
    sd = torch.load(shared_dir / "models/taef2" / ENCODER_FILE, weights_only=True)
    stripped = {k: v for k, v in sd.items() if ".pool." not in k}
    torch.save(stripped, tmp_path / ENCODER_FILE)
    with pytest.raises(ConfigError, match="missing"):
        build_taef2(tmp_path / ENCODER_FILE)


def test_pool_branch_changes_latents(shared_dir: Path, images: np.ndarray) -> None:
    model = build_taef2(shared_dir / "models/taef2" / ENCODER_FILE)
    x = torch.from_numpy(images[:1]).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.inference_mode():
        full = model.encoder(x)
        for i in (11, 12, 13):
            torch.nn.init.zeros_(model.encoder.layers[i].pool[3].weight)
        without = model.encoder(x)
    assert (full - without).abs().mean() > 0.05


def test_missing_weights_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from id2_plugin.embedders.taesd import TAEF2Encoder

    with pytest.raises(ModelNotFoundError, match="not found"):
        TAEF2Encoder(weights=tmp_path / "nowhere", device="cpu")
    monkeypatch.setenv("ID2_MODELS_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("id2_plugin.models.candidate_dirs", lambda name: [tmp_path / name])
    with pytest.raises(ModelNotFoundError, match="ID2_MODELS_DIR"):
        TAEF2Encoder(device="cpu")


def test_raw_embedding_retrieves_degraded_copy(taef2_encoder, images: np.ndarray) -> None:
    emb = Embedder(taef2_encoder, None)
    refs = emb.embed_arrays(images)
    assert np.allclose(np.linalg.norm(refs, axis=1), 1, atol=1e-5)
    noisy = np.clip(images[2].astype(np.int16) + np.random.default_rng(0).integers(-12, 13, images[2].shape), 0, 255)
    q = emb.embed_arrays(noisy.astype(np.uint8)[None])
    assert int(np.argmax(refs @ q[0])) == 2
