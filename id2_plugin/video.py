"""Video keyframe scanning: decode with PyAV, sample frames, drop near-duplicates, embed, query the store.

The unit of work is one video (:func:`scan_video` -> :class:`VideoReport`); :func:`scan_videos` runs many
(optionally with decoder threads), :func:`scan_videos_ray` runs the same per-video function on a Ray cluster.

Design notes (why it is built this way):

* **Keyframes at the decoder.** In ``mode="keyframes"`` (the default) the decoder is told to skip every
  non-key frame (``codec_context.skip_frame = "NONKEY"``): the demuxer still reads packets, but only
  intra frames are decoded, so an hour of video costs a few hundred image decodes, not 90,000.
* **Fixed-rate sampling** (``mode="fps"``) decodes every frame and keeps the first frame at or after each
  sample time ``k / fps`` (relative to the stream start). ``mode="all"`` keeps every decoded frame.
* **Near-duplicate dropping.** Consecutive sampled frames of a static shot embed to almost the same vector;
  embedding costs ~0.3 s per frame on CPU, decoding a few ms. Each sampled frame is shrunk by swscale to a
  16x16 grayscale thumbnail (area averaging) and dropped if the mean absolute difference to the last *kept*
  frame's thumbnail is below ``dedupe_threshold`` gray levels (default 3.0 of 255). Measured on the shared
  photos (320x240): distinct photos differ by >= 12.4 (1st percentile 25); a JPEG q20 re-encode of the same
  photo by <= 0.8, q5 by <= 4.6 (median 2.2), Gaussian noise sigma 8 by <= 0.9; a +10 % brightness change
  (10.8 median) or a 4-pixel pan (4.3 median) is kept. Comparing to the last kept frame (not the previous
  frame) means a slow drift is still sampled once it has accumulated. A dropped frame extends the time
  span of the frame it duplicates (``FrameHit.until``), so a static shot still reports its full span.
* **Bounded memory.** Frames stream through a batch of at most ``batch_size`` normalised (``S x S x 3``)
  images; nothing else keeps pixels. A report keeps only the (small) metadata of matched frames.
* **Errors are data.** A video that cannot be opened, has no decodable video stream, fails mid-way or ends
  before its declared duration yields a report whose ``error`` is set, *and* whose hits include every frame
  decoded before the fault. :func:`iter_frames` raises :class:`VideoError` after yielding those frames.
* **Frame index and timestamps.** ``timestamp`` is the presentation time in seconds from the stream start;
  ``index`` is ``round(timestamp * average frame rate)`` — the frame number for constant-frame-rate video
  (keyframe mode never decodes the frames in between, so they cannot be counted) and approximate for
  variable-frame-rate video.
* **Workers.** ``scan_videos(..., workers=N)`` decodes N videos in N threads (PyAV/FFmpeg decode outside
  the GIL) while one shared model embeds, serialised by a lock: the model is loaded once and torch's own
  intra-op threads already use every core; see benchmarks/results/video_scan.md for the measurement
  against one process (and model) per worker.

Nothing here imports PyAV, torch or ray at module level.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

import numpy as np

from ._lazy import require
from .errors import ConfigError, MediaError
from .types import Match

if TYPE_CHECKING:
    from .config import Config
    from .embedders.base import Embedder
    from .stores.base import ReferenceStore

__all__ = [
    "DEFAULT_DEDUPE_THRESHOLD",
    "VIDEO_EXTENSIONS",
    "Frame",
    "FrameHit",
    "ReferenceSummary",
    "SampleMode",
    "VideoError",
    "VideoReport",
    "VideoReportWriter",
    "embed_keyframes",
    "format_report_text",
    "iter_frames",
    "iter_video_files",
    "scan_video",
    "scan_videos",
    "scan_videos_ray",
]

SampleMode = Literal["keyframes", "fps", "all"]

#: Mean absolute difference (gray levels, 0-255) between 16x16 thumbnails below which a frame is a
#: near-duplicate of the last kept one. See the module docstring for the measurements behind it.
DEFAULT_DEDUPE_THRESHOLD = 3.0
_THUMB = 16

VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".m2ts", ".mts", ".wmv",
     ".flv", ".3gp", ".3g2", ".ogv", ".mxf", ".vob", ".y4m"}
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

    def __init__(self, message: str, source: str | None = None, *, kind: str = "corrupt", frames_read: int = 0,
                 at_seconds: float | None = None) -> None:
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
    """Counters filled while a :class:`_FrameReader` runs (read them after, or during, iteration)."""

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


class _FrameReader:
    """Decode ``path`` and yield ``(frame, is_duplicate)`` for every sampled frame; see :func:`iter_frames`."""

    def __init__(self, path: str | os.PathLike, mode: SampleMode = "keyframes", fps: float | None = None,
                 dedupe: bool = True, dedupe_threshold: float = DEFAULT_DEDUPE_THRESHOLD, threads: int = 0) -> None:
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
            raise VideoError(f"cannot read a video container (not a video, corrupt, or cut before its index): "
                             f"{_ffmpeg_message(exc)}", label, kind="not_a_video") from None
        except (OSError, ValueError) as exc:
            raise VideoError(f"cannot open video ({exc})", label, kind="not_a_video") from None
        try:
            fmt = container.format.name or ""
            if any(tag in fmt for tag in _IMAGE_DEMUXERS):
                raise VideoError(f"is a still image ({fmt}), not a video; identify it with `id2-plugin query`",
                                 label, kind="not_a_video")
            if not container.streams.video:
                raise VideoError("contains no video stream", label, kind="no_video_stream")
            stream = container.streams.video[0]
            if stream.codec_context is None:
                raise VideoError("unsupported codec: this FFmpeg build has no decoder for the video stream",
                                 label, kind="unsupported_codec")
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
                        thumb = vf.reformat(width=_THUMB, height=_THUMB, format="gray",
                                            interpolation="AREA").to_ndarray().astype(np.float32)
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
                self.label, kind="corrupt", frames_read=st.frames_sampled, at_seconds=at,
            ) from None
        declared, seen = st.duration_s, st.last_packet_seconds
        if declared is not None and declared > 0:
            seen = seen or 0.0
            # Allow a frame or two and container rounding; a real cut loses far more than that.
            tolerance = max(1.0, 0.05 * declared)
            if seen < declared - tolerance:
                raise VideoError(
                    f"truncated: the video stream ends at {seen:.2f} s but the file declares {declared:.2f} s",
                    self.label, kind="truncated", frames_read=st.frames_sampled, at_seconds=seen,
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
    for frame, duplicate in _FrameReader(path, mode, fps, dedupe, dedupe_threshold):
        if not duplicate:
            yield frame


# -- reports ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FrameHit:
    """A sampled frame whose embedding matched at least one reference (``matches`` best first).

    ``until`` is the timestamp of the last near-duplicate frame folded into this one (= ``timestamp``
    when none was dropped after it).
    """

    frame_index: int
    timestamp: float
    is_key: bool
    matches: tuple[Match, ...]
    until: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "frame_index": self.frame_index,
            "timestamp": round(self.timestamp, 6),
            "until": round(self.until, 6),
            "is_key": self.is_key,
            "matches": [m.to_dict() for m in self.matches],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FrameHit:
        matches = tuple(Match(**{**m, "labels": tuple(m.get("labels", ())), "signals": tuple((m.get("signals") or {}).items())})
                        for m in d["matches"])
        return cls(d["frame_index"], d["timestamp"], d["is_key"], matches, d["until"])


@dataclass(frozen=True)
class ReferenceSummary:
    """Where one reference appears in a video: time span, best score (and where), frames that matched it."""

    reference_id: str
    uri: str
    sha256: str
    labels: tuple[str, ...]
    first_timestamp: float
    last_timestamp: float
    best_score: float
    best_timestamp: float
    best_frame_index: int
    frames: int

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["labels"] = list(self.labels)
        for key in ("first_timestamp", "last_timestamp", "best_timestamp"):
            d[key] = round(d[key], 6)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReferenceSummary:
        return cls(**{**d, "labels": tuple(d.get("labels", ()))})


@dataclass
class VideoReport:
    """Everything found in one video. ``error`` is set when decoding stopped early (partial results kept)."""

    path: str
    hits: list[FrameHit]
    summary: list[ReferenceSummary]
    mode: str
    sample_fps: float | None
    k: int
    threshold: float
    embedder: str | None
    frames_decoded: int = 0
    frames_sampled: int = 0
    frames_embedded: int = 0
    duplicates_dropped: int = 0
    duration_s: float | None = None
    codec: str | None = None
    width: int | None = None
    height: int | None = None
    frame_rate: float | None = None
    error: str | None = None
    error_kind: str | None = None
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def is_match(self) -> bool:
        return bool(self.summary)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("hits", "summary")}
        d["elapsed_s"] = round(self.elapsed_s, 3)
        d["ok"] = self.ok
        d["is_match"] = self.is_match
        d["summary"] = [s.to_dict() for s in self.summary]
        d["hits"] = [h.to_dict() for h in self.hits]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VideoReport:
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names and k not in ("hits", "summary")}
        return cls(hits=[FrameHit.from_dict(h) for h in d.get("hits", ())],
                   summary=[ReferenceSummary.from_dict(s) for s in d.get("summary", ())], **kwargs)


class _Summariser:
    """Folds frame hits into one :class:`ReferenceSummary` per reference."""

    def __init__(self) -> None:
        self._acc: dict[str, dict[str, Any]] = {}

    def add(self, hit: FrameHit) -> None:
        for m in hit.matches:
            a = self._acc.get(m.reference_id)
            if a is None:
                self._acc[m.reference_id] = dict(
                    reference_id=m.reference_id, uri=m.uri, sha256=m.sha256, labels=tuple(m.labels),
                    first_timestamp=hit.timestamp, last_timestamp=hit.until, best_score=m.score,
                    best_timestamp=hit.timestamp, best_frame_index=hit.frame_index, frames=1,
                )
                continue
            a["first_timestamp"] = min(a["first_timestamp"], hit.timestamp)
            a["last_timestamp"] = max(a["last_timestamp"], hit.until)
            a["frames"] += 1
            if m.score > a["best_score"]:
                a.update(best_score=m.score, best_timestamp=hit.timestamp, best_frame_index=hit.frame_index)

    def result(self) -> list[ReferenceSummary]:
        out = [ReferenceSummary(**a) for a in self._acc.values()]
        return sorted(out, key=lambda s: (-s.best_score, s.first_timestamp))


@dataclass
class _Pending:
    """A kept frame waiting for its batch: the normalised pixels plus what the report needs."""

    index: int
    timestamp: float
    is_key: bool
    image: np.ndarray
    until: float


def scan_video(
    path: str | os.PathLike,
    embedder: Embedder,
    store: ReferenceStore,
    *,
    k: int = 5,
    threshold: float = 0.5,
    mode: SampleMode = "keyframes",
    fps: float | None = None,
    batch_size: int = 16,
    dedupe: bool = True,
    dedupe_threshold: float = DEFAULT_DEDUPE_THRESHOLD,
) -> VideoReport:
    """Sample, embed and search one video; never raises for bad media (the report carries the error).

    Frames are normalised exactly like images (``embedder.normalise``), embedded ``batch_size`` at
    a time with :meth:`Embedder.embed_arrays` and queried with ``store.query(k=k, threshold=threshold)``.
    Configuration mistakes (bad ``mode``/``fps``/``batch_size``) raise :class:`ConfigError`.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size} must be >= 1")
    t0 = time.perf_counter()
    reader = _FrameReader(path, mode, fps, dedupe, dedupe_threshold)
    hits: list[FrameHit] = []
    summariser = _Summariser()
    pending: list[_Pending] = []
    embedded = 0
    error: VideoError | None = None

    def flush() -> None:
        nonlocal embedded
        if not pending:
            return
        vectors = embedder.embed_arrays(np.stack([p.image for p in pending]))
        results = store.query(vectors, k=k, threshold=threshold)
        embedded += len(pending)
        for p, matches in zip(pending, results):
            if matches:
                hit = FrameHit(p.index, p.timestamp, p.is_key, tuple(matches), p.until)
                hits.append(hit)
                summariser.add(hit)
        pending.clear()

    try:
        for frame, duplicate in reader:
            if duplicate:
                # Folded into the kept frame it repeats; that frame is always the last pending one
                # because batches are flushed only when the next kept frame arrives.
                if pending:
                    pending[-1].until = frame.pts_seconds
                continue
            if len(pending) >= batch_size:
                flush()
            pending.append(_Pending(frame.index, frame.pts_seconds, frame.is_key,
                                    embedder.normalise(frame.rgb), frame.pts_seconds))
    except VideoError as exc:
        error = exc
    except MediaError as exc:  # a frame the normaliser refuses (e.g. above the pixel limit)
        error = VideoError(f"a decoded frame could not be normalised: {exc}", os.fspath(path), kind="corrupt",
                           frames_read=reader.stats.frames_sampled)
    flush()
    st = reader.stats
    return VideoReport(
        path=os.fspath(path), hits=hits, summary=summariser.result(), mode=mode, sample_fps=fps, k=k,
        threshold=threshold, embedder=embedder.identity, frames_decoded=st.frames_decoded,
        frames_sampled=st.frames_sampled, frames_embedded=embedded, duplicates_dropped=st.duplicates_dropped,
        duration_s=st.duration_s, codec=st.codec, width=st.width, height=st.height, frame_rate=st.frame_rate,
        error=str(error) if error else None, error_kind=error.kind if error else None,
        elapsed_s=time.perf_counter() - t0,
    )


def embed_keyframes(
    path: str | os.PathLike,
    embedder: Embedder,
    *,
    batch_size: int = 16,
    dedupe: bool = True,
) -> list[tuple[float, int, np.ndarray]]:
    """``(timestamp, frame_index, vector)`` for every kept keyframe of ``path``, embedded in batches.

    Raises :class:`VideoError` if the video cannot be decoded completely (a caller that wants partial
    results uses :func:`scan_video` or :func:`iter_frames`).
    """
    out: list[tuple[float, int, np.ndarray]] = []
    batch: list[tuple[float, int, np.ndarray]] = []

    def flush() -> None:
        if batch:
            vecs = embedder.embed_arrays(np.stack([b[2] for b in batch]))
            out.extend((t, i, v) for (t, i, _), v in zip(batch, vecs))
            batch.clear()

    for frame in iter_frames(path, "keyframes", dedupe=dedupe):
        batch.append((frame.pts_seconds, frame.index, embedder.normalise(frame.rgb)))
        if len(batch) >= batch_size:
            flush()
    flush()
    return out


# -- many videos --------------------------------------------------------------------------------------
def iter_video_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand files and folders (recursively, sorted) into video paths by extension.

    Files named explicitly are kept whatever their extension: the decoder, not the name, decides.
    """
    out: list[Path] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            out.extend(sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in VIDEO_EXTENSIONS))
        else:
            out.append(path)
    return out


class _SerialModel:
    """Shares one embedder and store between decoder threads: forward passes and searches take turns.

    Serialising is deliberate: torch already spreads one forward pass over every core, so two concurrent
    passes only fight for the same cores, while decoding (in FFmpeg, outside the GIL) overlaps freely.
    """

    def __init__(self, embedder: Embedder, store: ReferenceStore) -> None:
        self._embedder = embedder
        self._store = store
        self._lock = threading.Lock()
        self.normalise = embedder.normalise
        self.identity = embedder.identity

    def embed_arrays(self, images: np.ndarray) -> np.ndarray:
        with self._lock:
            return self._embedder.embed_arrays(images)

    def query(self, vectors: np.ndarray, k: int = 5, threshold: float | None = None) -> list[list[Match]]:
        with self._lock:
            return self._store.query(vectors, k=k, threshold=threshold)


def _video_bar(show: bool, total: int, desc: str) -> Any:
    """A tqdm bar counting finished videos; when ``show`` is false a disabled one, so callers never branch."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="video", disable=not show)


def scan_videos(
    paths: Sequence[str | os.PathLike],
    embedder: Embedder,
    store: ReferenceStore,
    *,
    k: int = 5,
    threshold: float = 0.5,
    mode: SampleMode = "keyframes",
    fps: float | None = None,
    batch_size: int = 16,
    dedupe: bool = True,
    dedupe_threshold: float = DEFAULT_DEDUPE_THRESHOLD,
    workers: int = 1,
    progress: bool = False,
) -> Iterator[VideoReport]:
    """Scan ``paths`` (files; expand folders with :func:`iter_video_files`) and yield reports as they finish.

    ``workers`` > 1 decodes that many videos concurrently in threads sharing one model (see the module
    notes); report order is then completion order. Memory: ``workers x batch_size`` normalised frames.
    """
    if workers < 1:
        raise ConfigError(f"workers={workers} must be >= 1")
    kwargs: dict[str, Any] = dict(k=k, threshold=threshold, mode=mode, fps=fps, batch_size=batch_size,
                                  dedupe=dedupe, dedupe_threshold=dedupe_threshold)
    # Validate the sampling options once, up front, instead of once per video.
    _FrameReader("", mode, fps, dedupe, dedupe_threshold)
    with _video_bar(progress, len(paths), "scanning videos") as bar:
        if workers == 1:
            for p in paths:
                report = scan_video(p, embedder, store, **kwargs)
                bar.update(1)
                yield report
            return
        shared = _SerialModel(embedder, store)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="id2-video") as pool:
            futures = [pool.submit(scan_video, p, shared, shared, **kwargs) for p in paths]  # type: ignore[arg-type]
            for fut in as_completed(futures):
                bar.update(1)
                yield fut.result()


# -- Ray ------------------------------------------------------------------------------------------------
#: Prefixes of environment variables forwarded to Ray workers (model location, offline mode, caches).
_RAY_FORWARD_ENV = ("ID2_", "HF_", "HUGGINGFACE_", "TORCH_HOME")


class _RayScanner:
    """Ray Data actor: builds the embedder and opens the store once, then scans one video per row."""

    def __init__(self, config: dict[str, Any], options: dict[str, Any]) -> None:
        from .config import load_config
        from .identify import build_embedder, open_store
        from .media import MediaLimits

        cfg = load_config(None, config)
        self.embedder = build_embedder(cfg.embedder, MediaLimits.from_config(cfg.media))
        self.store = open_store(cfg.store, embedder_identity=self.embedder.identity, dim=self.embedder.dim,
                                create=False)
        self.store.check_compatible(self.embedder.identity)
        self.options = dict(options, k=cfg.match.k, threshold=cfg.match.threshold,
                            batch_size=options.get("batch_size") or cfg.embedder.batch_size)

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        report = scan_video(row["path"], self.embedder, self.store, **self.options)
        report.path = row["given"]  # report the path as the caller wrote it; workers needed it absolute
        # One JSON string column: Arrow cannot hold the ragged, nullable report structure reliably.
        return {"path": row["given"], "report": json.dumps(report.to_dict())}


def scan_videos_ray(
    paths: Sequence[str | os.PathLike],
    config: Config,
    *,
    mode: SampleMode = "keyframes",
    fps: float | None = None,
    batch_size: int | None = None,
    dedupe: bool = True,
    dedupe_threshold: float = DEFAULT_DEDUPE_THRESHOLD,
    concurrency: int = 1,
    num_cpus: float = 1.0,
    ray_address: str | None = None,
    progress: bool = False,
) -> Iterator[VideoReport]:
    """Run :func:`scan_video` over ``paths`` as a Ray Data pipeline and yield the reports as they stream back.

    Each of ``concurrency`` actors (``num_cpus`` CPUs each) builds the embedder and opens the store from
    ``config`` once and opens the store read-only. Paths, the model weights and the store must be readable
    at the same location on every node (shared storage). Uses the running Ray cluster, else connects to
    ``ray_address`` (``"auto"``, ``"ray://host:10001"``), else starts a local Ray; the driver's ``ID2_*`` /
    ``HF_*`` environment variables are forwarded to the workers when Ray is started here.

    The store and model are checked on the driver first, so a missing or incompatible store fails here
    with a clear :class:`~id2_plugin.errors.StoreError` instead of inside every actor.
    """
    ray = require("ray")
    require("ray.data")
    _FrameReader("", mode, fps, dedupe, dedupe_threshold)
    if not paths:
        return
    _check_store_on_driver(config)
    if not ray.is_initialized():
        # Workers must find the model and cache like the driver does (ID2_MODELS_DIR, offline flags...).
        env = {k: v for k, v in os.environ.items() if k.startswith(_RAY_FORWARD_ENV)}
        ray.init(address=ray_address, include_dashboard=False, runtime_env={"env_vars": env})
    options = dict(mode=mode, fps=fps, batch_size=batch_size, dedupe=dedupe, dedupe_threshold=dedupe_threshold)
    ds = ray.data.from_items([{"path": os.path.abspath(p), "given": os.fspath(p)} for p in paths])
    ds = ds.map(_RayScanner, fn_constructor_kwargs={"config": config.to_dict(), "options": options},
                concurrency=concurrency, num_cpus=num_cpus)
    with _video_bar(progress, len(paths), "scanning videos (ray)") as bar:
        for row in ds.iter_rows():
            bar.update(1)
            yield VideoReport.from_dict(json.loads(row["report"]))


def _check_store_on_driver(config: Config) -> None:
    from .identify import build_embedder, open_store

    embedder = build_embedder(config.embedder)
    with open_store(config.store, embedder_identity=embedder.identity, dim=embedder.dim, create=False) as store:
        store.check_compatible(embedder.identity)


# -- streaming output -------------------------------------------------------------------------------------
_CSV_FIELDS = ("video", "frame_index", "timestamp", "until", "is_key", "rank", "reference_id", "uri", "sha256",
               "score", "error")


class VideoReportWriter:
    """Write reports as they arrive: JSON Lines (one object per video) or CSV (one row per matched frame
    and reference, plus one row with ``error`` set for a failed video). Flushed after every video, so an
    interrupted run keeps everything written so far.
    """

    def __init__(self, stream: IO[str], fmt: Literal["jsonl", "csv"]) -> None:
        if fmt not in ("jsonl", "csv"):
            raise ConfigError(f"output format {fmt!r}: expected jsonl or csv")
        self.stream = stream
        self.fmt = fmt
        self._csv = csv.writer(stream) if fmt == "csv" else None
        if self._csv is not None:
            self._csv.writerow(_CSV_FIELDS)

    def write(self, report: VideoReport) -> None:
        if self._csv is None:
            self.stream.write(json.dumps(report.to_dict(), default=str) + "\n")
        else:
            for hit in report.hits:
                for m in hit.matches:
                    self._csv.writerow((report.path, hit.frame_index, f"{hit.timestamp:.3f}", f"{hit.until:.3f}",
                                        int(hit.is_key), m.rank, m.reference_id, m.uri, m.sha256, f"{m.score:.6f}", ""))
            if report.error:
                self._csv.writerow((report.path, "", "", "", "", "", "", "", "", "", report.error))
        self.stream.flush()


def format_report_text(report: VideoReport) -> str:
    """A short human-readable summary of one report (the CLI's default output)."""
    buf = io.StringIO()
    status = "ERROR" if report.error else ("MATCH" if report.is_match else "NO MATCH")
    dur = f"{report.duration_s:.1f} s" if report.duration_s is not None else "? s"
    buf.write(f"{report.path}: {status} ({dur}, {report.frames_sampled} sampled frames, "
              f"{report.frames_embedded} embedded, {report.duplicates_dropped} near-duplicates dropped)\n")
    for s in report.summary:
        buf.write(f"  {s.reference_id} score={s.best_score:.4f} at {s.best_timestamp:.2f} s (frame "
                  f"{s.best_frame_index}), seen {s.first_timestamp:.2f}-{s.last_timestamp:.2f} s in {s.frames} "
                  f"frames  {s.uri}\n")
    if report.error:
        buf.write(f"  error ({report.error_kind}): {report.error}\n")
    return buf.getvalue()
