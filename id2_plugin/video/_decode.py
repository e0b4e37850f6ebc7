"""Decoding: open a video with PyAV, sample keyframes or a fixed rate, drop near-duplicate frames."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .._lazy import require
from ..errors import ConfigError, MediaError

if TYPE_CHECKING:
    pass

SampleMode = Literal["keyframes", "fps", "all"]

#: Mean absolute difference (gray levels, 0-255) between 16x16 thumbnails below which a frame is a
#: near-duplicate of the last kept one. See the module docstring for the measurements behind it.
DEFAULT_DEDUPE_THRESHOLD = 3.0
_THUMB = 16

VIDEO_EXTENSIONS = frozenset(
    {
        ".mp4",
        ".m4v",
        ".mov",
        ".mkv",
        ".webm",
        ".avi",
        ".mpg",
        ".mpeg",
        ".ts",
        ".m2ts",
        ".mts",
        ".wmv",
        ".flv",
        ".3gp",
        ".3g2",
        ".ogv",
        ".mxf",
        ".vob",
        ".y4m",
    }
)

#: Demuxers that open still images as one-frame "videos"; a still image is not a video (use ``query``).
#: Animated formats (gif, apng) have their own demuxers and are scanned like any video.
_IMAGE_DEMUXERS = ("image2", "_pipe")


class VideoError(MediaError):
    """A video could not be decoded (fully). ``kind`` says why; ``frames_read`` how many frames came first.

    Kinds: ``not_found``, ``not_a_video`` (unreadable container, random bytes, empty file, still image),
    ``no_video_stream``, ``unsupported_codec``, ``corrupt`` (decoding failed mid-way), ``truncated``
    (the stream ended before its declared duration).
    """

    def __init__(
        self,
        message: str,
        source: str | None = None,
        *,
        kind: str = "corrupt",
        frames_read: int = 0,
        at_seconds: float | None = None,
    ) -> None:
        self.kind = kind
        self.frames_read = frames_read
        self.at_seconds = at_seconds
        super().__init__(message, source)


@dataclass(frozen=True)
class Frame:
    """One sampled video frame: ``index`` (see module notes), presentation time, key flag, ``H x W x 3`` RGB."""

    index: int
    pts_seconds: float
    is_key: bool
    rgb: np.ndarray = field(repr=False, compare=False)


@dataclass
class _ReadStats:
    """Counters filled while a :class:`FrameReader` runs (read them after, or during, iteration)."""

    frames_decoded: int = 0
    frames_sampled: int = 0
    duplicates_dropped: int = 0
    last_packet_seconds: float | None = None
    duration_s: float | None = None
    codec: str | None = None
    width: int | None = None
    height: int | None = None
    frame_rate: float | None = None


def _ffmpeg_message(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    log = getattr(exc, "log", None)
    # FFmpeg's own log line (e.g. "moov atom not found") is more useful than the errno text.
    if log and isinstance(log, tuple) and len(log) >= 3 and log[2]:
        text = f"{text} ({str(log[2]).strip()})"
    return str(text)


class FrameReader:
    """Decode ``path`` and yield ``(frame, is_duplicate)`` for every sampled frame; see :func:`iter_frames`."""

    def __init__(
        self,
        path: str | os.PathLike,
        mode: SampleMode = "keyframes",
        fps: float | None = None,
        dedupe: bool = True,
        dedupe_threshold: float = DEFAULT_DEDUPE_THRESHOLD,
        threads: int = 0,
    ) -> None:
        if mode not in ("keyframes", "fps", "all"):
            raise ConfigError(f"video mode={mode!r}: expected 'keyframes', 'fps' or 'all'")
        if mode == "fps" and (fps is None or not fps > 0):
            raise ConfigError(f"video mode='fps' needs fps > 0, got {fps!r}")
        if mode != "fps" and fps is not None:
            raise ConfigError(f"fps={fps} is only meaningful with mode='fps' (got mode={mode!r})")
        self.path = path
        self.label = os.fspath(path)
        self.mode: SampleMode = mode
        self.fps = fps
        self.dedupe = dedupe
        self.dedupe_threshold = float(dedupe_threshold)
        self.threads = threads
        self.stats = _ReadStats()

    # -- opening ----------------------------------------------------------------------------------
    def _open(self) -> tuple[Any, Any]:
        av = require("av")
        label = self.label
        p = Path(self.path)
        if not p.exists():
            raise VideoError("file not found", label, kind="not_found")
        if p.is_dir():
            raise VideoError("is a directory, not a video", label, kind="not_a_video")
        if p.stat().st_size == 0:
            raise VideoError("empty file (0 bytes)", label, kind="not_a_video")
        try:
            container = av.open(os.fspath(p), mode="r")
        except av.FFmpegError as exc:
            raise VideoError(
                f"cannot read a video container (not a video, corrupt, or cut before its index): "
                f"{_ffmpeg_message(exc)}",
                label,
                kind="not_a_video",
            ) from None
        except (OSError, ValueError) as exc:
            raise VideoError(f"cannot open video ({exc})", label, kind="not_a_video") from None
        try:
            fmt = container.format.name or ""
            if any(tag in fmt for tag in _IMAGE_DEMUXERS):
                raise VideoError(
                    f"is a still image ({fmt}), not a video; identify it with `id2-plugin query`",
                    label,
                    kind="not_a_video",
                )
            if not container.streams.video:
                raise VideoError("contains no video stream", label, kind="no_video_stream")
            stream = container.streams.video[0]
            if stream.codec_context is None:
                raise VideoError(
                    "unsupported codec: this FFmpeg build has no decoder for the video stream",
                    label,
                    kind="unsupported_codec",
                )
        except BaseException:
            container.close()
            raise
        return container, stream

    def _configure(self, container: Any, stream: Any) -> None:
        cc = stream.codec_context
        if self.mode == "keyframes":
            # The whole point of keyframe mode: the decoder never reconstructs P/B frames.
            cc.skip_frame = "NONKEY"
            # Frame threading buys nothing when every decoded frame is independent and costs a pipeline
            # of frame delays (measured ~20 % slower on 720p H.264 keyframes); slice threading does not.
            cc.thread_type = "SLICE"
        else:
            cc.thread_type = "AUTO"
        cc.thread_count = self.threads
        st = self.stats
        st.codec = cc.name
        st.width, st.height = cc.width or None, cc.height or None
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        st.frame_rate = float(rate) if rate else None
        if stream.duration is not None and stream.time_base is not None:
            st.duration_s = float(stream.duration * stream.time_base)
        elif container.duration is not None and len(container.streams) == 1:
            # The container duration covers every stream; only trust it when the video is all there is.
            st.duration_s = container.duration / 1_000_000

    # -- iteration --------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[tuple[Frame, bool]]:
        av = require("av")
        container, stream = self._open()
        try:
            self._configure(container, stream)
            yield from self._decode(av, container, stream)
        finally:
            container.close()

    @staticmethod
    def _upright(vf: Any) -> np.ndarray:
        """RGB as a player shows it: phone videos store sensor-oriented frames plus a display rotation
        (counter-clockwise degrees), like EXIF orientation for photos (which the image path applies too)."""
        rgb = vf.to_ndarray(format="rgb24")
        turns = round(getattr(vf, "rotation", 0) / 90) % 4
        return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb

    def _decode(self, av: Any, container: Any, stream: Any) -> Iterator[tuple[Frame, bool]]:
        st = self.stats
        tb = stream.time_base
        start = stream.start_time or 0
        rate = st.frame_rate
        next_sample = 0.0
        last_thumb: np.ndarray | None = None
        counter = 0
        try:
            for packet in container.demux(stream):
                ts = packet.pts if packet.pts is not None else packet.dts
                if ts is not None and tb is not None:
                    end = float((ts - start + (packet.duration or 0)) * tb)
                    st.last_packet_seconds = end if st.last_packet_seconds is None else max(st.last_packet_seconds, end)
                for vf in packet.decode():
                    st.frames_decoded += 1
                    counter += 1
                    if vf.pts is not None and tb is not None:
                        t = float((vf.pts - start) * tb)
                    else:
                        t = (counter - 1) / rate if rate else float(counter - 1)
                    if self.fps is not None:  # mode "fps": the first frame at or after each k / fps
                        if t < next_sample - 1e-6:
                            continue
                        next_sample = (math.floor(t * self.fps + 1e-6) + 1) / self.fps
                    st.frames_sampled += 1
                    index = int(round(t * rate)) if rate else counter - 1
                    duplicate = False
                    if self.dedupe:
                        thumb = (
                            vf.reformat(width=_THUMB, height=_THUMB, format="gray", interpolation="AREA")
                            .to_ndarray()
                            .astype(np.float32)
                        )
                        if last_thumb is not None and float(np.abs(thumb - last_thumb).mean()) < self.dedupe_threshold:
                            duplicate = True
                            st.duplicates_dropped += 1
                        else:
                            last_thumb = thumb
                    # A dropped duplicate needs no RGB conversion: that is most of its cost.
                    rgb = np.zeros((0, 0, 3), np.uint8) if duplicate else self._upright(vf)
                    yield Frame(index=index, pts_seconds=t, is_key=bool(vf.key_frame), rgb=rgb), duplicate
        except av.FFmpegError as exc:
            at = st.last_packet_seconds
            raise VideoError(
                f"decoding failed{f' near {at:.2f} s' if at is not None else ''} after {st.frames_decoded} decoded "
                f"frames: {_ffmpeg_message(exc)}",
                self.label,
                kind="corrupt",
                frames_read=st.frames_sampled,
                at_seconds=at,
            ) from None
        declared, seen = st.duration_s, st.last_packet_seconds
        if declared is not None and declared > 0:
            seen = seen or 0.0
            # Allow a frame or two and container rounding; a real cut loses far more than that.
            tolerance = max(1.0, 0.05 * declared)
            if seen < declared - tolerance:
                raise VideoError(
                    f"truncated: the video stream ends at {seen:.2f} s but the file declares {declared:.2f} s",
                    self.label,
                    kind="truncated",
                    frames_read=st.frames_sampled,
                    at_seconds=seen,
                )


def iter_frames(
    path: str | os.PathLike,
    mode: SampleMode = "keyframes",
    fps: float | None = None,
    dedupe: bool = True,
    *,
    dedupe_threshold: float = DEFAULT_DEDUPE_THRESHOLD,
) -> Iterator[Frame]:
    """Lazily decode ``path`` and yield sampled :class:`Frame` objects (RGB at the video's own size).

    ``mode``: ``"keyframes"`` (decoder skips non-key frames), ``"fps"`` (``fps`` samples per second) or
    ``"all"``. ``dedupe`` drops frames nearly identical to the last yielded one (``dedupe_threshold``, see
    the module notes). Raises :class:`VideoError` — after yielding every frame decoded before the fault —
    for unreadable, truncated or corrupt videos and unsupported codecs.
    """
    for frame, duplicate in FrameReader(path, mode, fps, dedupe, dedupe_threshold):
        if not duplicate:
            yield frame
