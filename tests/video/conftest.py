"""Fixtures for the video tests: real H.264 / MPEG-4 videos made from real photos, with known keyframes.

Videos are tiny (320x240, 4 fps, a few seconds) so encoding costs milliseconds; the expensive part is
the TAEF2 embedding, so each video keeps only a handful of keyframes.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance

SIZE = (320, 240)
FPS = 4


def photo_array(source: Path | io.BytesIO, size: tuple[int, int] = SIZE) -> np.ndarray:
    return np.asarray(Image.open(source).convert("RGB").resize(size, Image.Resampling.BICUBIC))


def edited_array(path: Path, size: tuple[int, int] = SIZE) -> np.ndarray:
    """A visibly edited copy: saturation and brightness up, then a harsh JPEG re-encode."""
    img = Image.open(path).convert("RGB")
    img = ImageEnhance.Brightness(ImageEnhance.Color(img).enhance(1.6)).enhance(1.15)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=25)
    return photo_array(io.BytesIO(buf.getvalue()), size)


def write_video(
    path: Path,
    frames: Sequence[np.ndarray],
    keyframes: set[int],
    *,
    fps: int = FPS,
    codec: str = "libx264",
    container_options: dict[str, str] | None = None,
) -> Path:
    """Encode ``frames`` (RGB arrays) with intra frames exactly at ``keyframes`` and nowhere else."""
    import av
    from av.video.frame import PictureType

    h, w = frames[0].shape[:2]
    with av.open(str(path), "w", options=container_options or {}) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        # No automatic keyframes: a huge GOP and (x264) no scene-cut detection, so the forced ones are all.
        stream.codec_context.gop_size = 10_000
        if codec == "libx264":
            stream.codec_context.options = {"x264-params": "scenecut=0", "preset": "veryfast"}
        else:  # FFmpeg's own encoders (mpeg4, ...): scene-change threshold out of reach
            stream.codec_context.options = {"sc_threshold": "1000000000"}
        for i, arr in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
            frame.pict_type = PictureType.I if i in keyframes else PictureType.NONE
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


@dataclass(frozen=True)
class Scene:
    """The main test video and the ground truth about it."""

    path: Path
    fps: int
    refs: list[Path]  # indexed in the store
    unrelated: Path  # shown in the video, not indexed
    keyframes: list[int]
    #: expected (timestamp, reference index in refs) for each kept keyframe, None = no reference
    expected: list[tuple[float, int | None]]


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("videos")


@pytest.fixture(scope="session")
def ref_photos(photo_paths: list[Path]) -> list[Path]:
    """Six indexed references; the first three appear in :func:`scene`."""
    return [photo_paths[i] for i in (3, 50, 120, 200, 333, 470)]


@pytest.fixture(scope="session")
def scene(video_dir: Path, ref_photos: list[Path], photo_paths: list[Path]) -> Scene:
    """8 s at 4 fps (32 frames), H.264 in MP4:

    ====  =========  ===========================================  =========
    t(s)  frames     content                                      keyframes
    ====  =========  ===========================================  =========
    0-2   0-7        reference 0                                  0, 4 (4 repeats 0: a near-duplicate)
    2-4   8-15       reference 1                                  8
    4-6   16-23      EDITED reference 2 (colour + JPEG q25)       16
    6-8   24-31      an unrelated photo (not in the store)        24
    ====  =========  ===========================================  =========
    """
    unrelated = photo_paths[600]
    segments = [
        photo_array(ref_photos[0]),
        photo_array(ref_photos[1]),
        edited_array(ref_photos[2]),
        photo_array(unrelated),
    ]
    frames = [segments[i // 8] for i in range(32)]
    keyframes = [0, 4, 8, 16, 24]
    path = write_video(video_dir / "scene.mp4", frames, set(keyframes))
    expected = [(0.0, 0), (2.0, 1), (4.0, 2), (6.0, None)]
    return Scene(path, FPS, ref_photos, unrelated, keyframes, expected)


@pytest.fixture(scope="session")
def frame_of() -> Callable[[Path], np.ndarray]:
    """Photo path -> the RGB frame (320x240) the test videos show for it."""
    return photo_array


@pytest.fixture(scope="session")
def make_video(video_dir: Path) -> Callable[..., Path]:
    counter = iter(range(10_000))

    def make(frames: Sequence[np.ndarray], keyframes: set[int], suffix: str = ".mkv", **kwargs: object) -> Path:
        return write_video(video_dir / f"v{next(counter)}{suffix}", frames, keyframes, **kwargs)  # type: ignore[arg-type]

    return make


@pytest.fixture(scope="session")
def video_embedder(taef2_encoder):
    """The raw TAEF2 latent embedder: deterministic, independent of whichever W is shipped."""
    from id2_plugin.embedders.base import Embedder

    return Embedder(taef2_encoder, None)


@pytest.fixture(scope="session")
def ref_store(tmp_path_factory: pytest.TempPathFactory, video_embedder, latent_cache, ref_photos: list[Path]):
    """A FaissStore holding the six reference photos (latents from the session cache)."""
    from id2_plugin.stores.faiss_store import FaissStore
    from id2_plugin.types import ReferenceRecord

    location = tmp_path_factory.mktemp("video-store") / "store"
    store = FaissStore(location, embedder_identity=video_embedder.identity, dim=video_embedder.dim, create=True)
    vectors = video_embedder.project(latent_cache.encode(ref_photos))
    records = [
        ReferenceRecord(sha256=hashlib.sha256(p.read_bytes()).hexdigest(), uri=str(p), labels=("ref",))
        for p in ref_photos
    ]
    store.add(vectors, records)
    yield store
    store.close()
