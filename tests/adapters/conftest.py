"""Fixtures for the host-adapter tests: real photos, their edited copies, a small fast embedder."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
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
    from id2_plugin.assembly import load_projection
    from id2_plugin.embedders.base import Embedder

    return Embedder(taef2_encoder, load_projection("default", "taef2"))


@pytest.fixture(scope="session")
def small_embedder(shared_dir: Path):
    """TAEF2 at 64 px, raw latent (2,048-d): ~16x cheaper per image, for tests that embed hundreds."""
    from id2_plugin.assembly import build_embedder
    from id2_plugin.config import EmbedderConfig

    return build_embedder(
        EmbedderConfig(input_size=64, projection="none", allow_raw_latent=True, device="cpu", batch_size=8)
    )


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


CLI = Path(sys.executable).with_name("id2-plugin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serving(args: list[str], serve_args: list[str], *, token: str, log: Path) -> Iterator[str]:
    """``id2-plugin ARGS serve SERVE_ARGS`` as a user starts it, on 127.0.0.1 and a free port; yields its URL
    once ``/healthz`` answers, and stops it (SIGTERM, then SIGKILL) afterwards."""
    port = free_port()
    cmd = [str(CLI), *args, "serve", *serve_args, "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    env = dict(os.environ, ID2_SERVE_TOKEN=token)
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(proc, url, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


def _wait_healthy(proc: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + 180
    while True:
        if proc.poll() is not None:
            pytest.fail(f"serve exited early: {log.read_text()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            pytest.fail("serve did not come up within 180 s")
        time.sleep(0.3)


@pytest.fixture(scope="session")
def serve_cli():
    """``serve_cli(args, serve_args, token=..., log=...)`` -> context manager yielding the URL: see :func:`serving`."""
    return serving
