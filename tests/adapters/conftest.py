"""Fixtures for the host-adapter tests: real photos, their edited copies, a small fast embedder."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from id2_plugin.testing import reupload_jpeg, reupload_pixels


@pytest.fixture(scope="session")
def edited_copies(photo_paths: list[Path], tmp_path_factory: pytest.TempPathFactory) -> dict[Path, Path]:
    """Edited JPEG copies of the first 24 photos, written once per session."""
    out_dir = tmp_path_factory.mktemp("edited")
    out = {}
    for p in photo_paths[:24]:
        q = out_dir / f"{p.stem}_edit.jpg"
        q.write_bytes(reupload_jpeg(p))
        out[p] = q
    return out


@pytest.fixture(scope="session")
def degrade_array():
    """``degrade_array(rgb)`` -> RGB array of the degraded copy (a perception benchmark transform)."""
    return reupload_pixels


@pytest.fixture(scope="session")
def embedder_256(taef2_encoder):
    """TAEF2 at 256 px with the shipped W when present, else the raw latent (what the adapters default to)."""
    from id2_plugin.embedders.base import Embedder
    from id2_plugin.identify import load_projection

    return Embedder(taef2_encoder, load_projection("default", "taef2"))


@pytest.fixture(scope="session")
def small_embedder(shared_dir: Path):
    """TAEF2 at 64 px, raw latent (2,048-d): ~16x cheaper per image, for tests that embed hundreds."""
    from id2_plugin.config import EmbedderConfig
    from id2_plugin.identify import build_embedder

    return build_embedder(EmbedderConfig(input_size=64, projection="none", allow_raw_latent=True, device="cpu", batch_size=8))


def write_video(path: Path, shots: list[np.ndarray], *, frames_per_shot: int = 8, fps: int = 4) -> Path:
    """Encode one H.264 shot per RGB array (``frames_per_shot`` frames each), a keyframe at each shot start."""
    import av
    from av.video.frame import PictureType

    h, w = shots[0].shape[:2]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.gop_size = 10_000
        stream.codec_context.options = {"x264-params": "scenecut=0", "preset": "veryfast"}
        for s, arr in enumerate(shots):
            for i in range(frames_per_shot):
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
                frame.pict_type = PictureType.I if i == 0 else PictureType.NONE
                for packet in stream.encode(frame):
                    out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def frame_of(source: Path | bytes, size: tuple[int, int] = (320, 240)) -> np.ndarray:
    """An RGB frame of ``size`` from an image file or encoded bytes."""
    img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source).convert("RGB")
    return np.asarray(img.resize(size, Image.Resampling.BICUBIC))


@pytest.fixture(scope="session")
def make_video():
    """``make_video(path, shots)`` -> path: see :func:`write_video`."""
    return write_video


@pytest.fixture(scope="session")
def make_frame():
    """``make_frame(path_or_bytes)`` -> 320x240 RGB frame: see :func:`frame_of`."""
    return frame_of
