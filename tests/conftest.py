"""Shared fixtures: real photos and the real TAEF2 model from ../shared, tiny random diffusers models."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

# Tests import onnxruntime themselves (importorskip) before the package can switch its telemetry off.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("ID2_SHARED_DIR", ROOT.parent / "shared"))
PHOTOS = SHARED / "data" / "photos"
REAL_EDITS = SHARED / "data" / "real-edits-dev"
TAEF2_DIR = SHARED / "models" / "taef2"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session", autouse=True)
def _isolated_env(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests never touch the network nor the user's cache; the latent cache is shared within the session."""
    os.environ["ID2_OFFLINE"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("ID2_TEST_CACHE_DIR", str(tmp_path_factory.mktemp("id2-cache")))
    os.environ["ID2_MODELS_DIR"] = str(SHARED / "models")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} not present")
    return SHARED


@pytest.fixture(scope="session")
def photo_paths(shared_dir: Path) -> list[Path]:
    """All 793 real photos, sorted by name (stable across machines)."""
    paths = sorted(PHOTOS.glob("*.jpg"))
    assert len(paths) > 700
    return paths


@pytest.fixture(scope="session")
def real_edits_dir(shared_dir: Path) -> Path:
    return REAL_EDITS


@pytest.fixture(scope="session")
def taef2_encoder(shared_dir: Path):
    """The real TAEF2 encoder, loaded once per session (CPU, fp32)."""
    from id2_plugin.embedders.taesd import TAEF2Encoder

    return TAEF2Encoder(weights=TAEF2_DIR, device="cpu", batch_size=16)


@pytest.fixture(scope="session")
def latent_cache(taef2_encoder):
    """Latent cache over the session's cache dir: photos are encoded once for all tests."""
    from id2_plugin.cache import LatentCache

    return LatentCache(taef2_encoder, os.environ["ID2_TEST_CACHE_DIR"])


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def tiny_autoencoder_kl():
    """A tiny randomly initialised AutoencoderKL (diffusers' test-sized config), seeded."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=32,
    ).eval()


@pytest.fixture(scope="session")
def degraded_copy():
    """``degraded_copy(path, i)`` -> PIL image: a JPEG q35 copy (even ``i``) or a blurred then JPEG q90 copy
    (odd ``i``) of a photo, deterministic; alternating the two keeps the evaluation and calibration sets mixed.
    """
    import io

    from PIL import Image, ImageFilter

    def degrade(path: Path, i: int) -> Image.Image:
        img = Image.open(path).convert("RGB")
        if i % 2:
            img = img.filter(ImageFilter.GaussianBlur(1.5))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90 if i % 2 else 35)
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")

    return degrade


@pytest.fixture(scope="session")
def restaged():
    """``restaged(origin, scene)`` -> PIL image: the origin photo shrunk to 250 px wide and pasted near the
    top-left of another photo (640 x 480), JPEG q75 - a subject re-staged small in a new scene."""
    import io

    from PIL import Image

    def make(origin: Path, scene: Path) -> Image.Image:
        subject = Image.open(origin).convert("RGB")
        canvas = Image.open(scene).convert("RGB").resize((640, 480))
        canvas.paste(subject.resize((250, 250 * subject.height // subject.width)), (40, 30))
        buf = io.BytesIO()
        canvas.save(buf, "JPEG", quality=75)
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")

    return make
