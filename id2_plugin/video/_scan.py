"""Scanning: one video through the embedder and store; many videos with decoder threads."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._batching import BatchSizer, pipelined
from ..errors import ConfigError
from ..types import Match

if TYPE_CHECKING:
    from ..embedders.base import Embedder
    from ..stores.base import ReferenceStore
from ._decode import DEFAULT_DEDUPE_THRESHOLD, VIDEO_EXTENSIONS, FrameReader, SampleMode, VideoError, iter_frames
from ._report import FrameHit, VideoReport, _Pending, _Summariser

#: How frames are decided: normalised frames in, per frame the references it matches (at or above the
#: threshold, best first) out. A pipeline passes identification's own (decision model, windows); without
#: one, :func:`cosine_search` lets the store's cosine decide.
FrameSearch = Callable[[list[np.ndarray]], list[list[Match]]]


def cosine_search(embedder: Embedder, store: ReferenceStore, k: int, threshold: float) -> FrameSearch:
    """Frames decided on the store's cosine: the ``k`` best references at or above ``threshold``."""

    def search(images: list[np.ndarray]) -> list[list[Match]]:
        return store.query(embedder.embed_arrays(np.stack(images)), k=k, threshold=threshold)

    return search


def scan_video(
    path: str | os.PathLike,
    embedder: Embedder,
    store: ReferenceStore,
    *,
    k: int = 5,
    threshold: float = 0.5,
    mode: SampleMode = "keyframes",
    fps: float | None = None,
    batch_size: int | str | BatchSizer = 16,
    dedupe: bool = True,
    dedupe_threshold: float = DEFAULT_DEDUPE_THRESHOLD,
    search: FrameSearch | None = None,
) -> VideoReport:
    """Sample, embed and search one video; never raises for bad media (the report carries the error).

    Frames are decoded and normalised exactly like images (``embedder.normalise``) in threads, overlapped
    with the model, and decided ``batch_size`` at a time (an int, ``auto`` or a shared :class:`BatchSizer`)
    by ``search`` (default: :func:`cosine_search` with ``k`` and ``threshold``; ``threshold`` is what the
    report states). Configuration mistakes (bad ``mode``/``fps``/``batch_size``) raise :class:`ConfigError`.
    """
    decide = search or cosine_search(embedder, store, k, threshold)
    sizer = batch_size if isinstance(batch_size, BatchSizer) else BatchSizer(batch_size)
    t0 = time.perf_counter()
    reader = FrameReader(path, mode, fps, dedupe, dedupe_threshold)
    hits: list[FrameHit] = []
    summariser = _Summariser()
    embedded = 0
    error: VideoError | None = None

    def normalise(p: _Pending) -> np.ndarray:
        image, p.rgb = embedder.normalise(p.rgb), None  # the decoded frame is freed as soon as it is normalised
        return image

    def model(_: list[_Pending], images: list[np.ndarray]) -> list[list[Match]]:
        return decide(images)

    try:
        with closing(pipelined(_kept_frames(reader), normalise, model, batch_size=sizer)) as stream:
            for done in stream:
                if done.error is not None:  # a decoded frame the normaliser refuses (e.g. above the pixel limit)
                    error = VideoError(
                        f"a decoded frame could not be normalised: {done.error}",
                        os.fspath(path),
                        kind="corrupt",
                        frames_read=reader.stats.frames_sampled,
                    )
                    break
                embedded += 1
                if done.output:
                    p = done.item
                    hit = FrameHit(p.index, p.timestamp, p.is_key, tuple(done.output), p.until)
                    hits.append(hit)
                    summariser.add(hit)
    except VideoError as exc:
        error = exc
    return _video_report(
        path,
        reader,
        hits,
        summariser,
        embedded,
        error,
        mode=mode,
        fps=fps,
        k=k,
        threshold=threshold,
        identity=embedder.identity,
        elapsed_s=time.perf_counter() - t0,
    )


def _video_report(
    path: str | os.PathLike,
    reader: FrameReader,
    hits: list[FrameHit],
    summariser: _Summariser,
    embedded: int,
    error: VideoError | None,
    *,
    mode: SampleMode,
    fps: float | None,
    k: int,
    threshold: float,
    identity: str,
    elapsed_s: float,
) -> VideoReport:
    """The report of one scan: its hits and summary, the settings and what the reader saw."""
    st = reader.stats
    return VideoReport(
        path=os.fspath(path),
        hits=hits,
        summary=summariser.result(),
        mode=mode,
        sample_fps=fps,
        k=k,
        threshold=threshold,
        embedder=identity,
        frames_decoded=st.frames_decoded,
        frames_sampled=st.frames_sampled,
        frames_embedded=embedded,
        duplicates_dropped=st.duplicates_dropped,
        duration_s=st.duration_s,
        codec=st.codec,
        width=st.width,
        height=st.height,
        frame_rate=st.frame_rate,
        error=str(error) if error else None,
        error_kind=error.kind if error else None,
        elapsed_s=elapsed_s,
    )


def _kept_frames(reader: FrameReader) -> Iterator[_Pending]:
    """The kept frames, each held back until the next sampled frame arrives: its content is taken to stay on
    screen until then (a keyframe, or a sample in fps mode; duplicates in between do not end it), so a 2 s
    shot with one keyframe spans 2 s, not 0; the last one spans to the video's end."""
    last: _Pending | None = None
    for frame, duplicate in reader:
        if last is not None:
            last.until = frame.pts_seconds
        if duplicate:
            continue
        if last is not None:
            yield last
        last = _Pending(frame.index, frame.pts_seconds, frame.is_key, frame.rgb, frame.pts_seconds)
    if last is not None:
        last.until = _video_end(reader.stats, last.until)
        yield last


def _video_end(stats: Any, until: float) -> float:
    """Where the last sampled frame's span ends in a completely decoded video: the video's end."""
    end = stats.duration_s if stats.duration_s is not None else stats.last_packet_seconds
    return max(until, end) if end is not None else until


def embed_keyframes(
    path: str | os.PathLike,
    embedder: Embedder,
    *,
    batch_size: int | str | BatchSizer = 16,
    dedupe: bool = True,
) -> list[tuple[float, int, np.ndarray]]:
    """``(timestamp, frame_index, vector)`` for every kept keyframe of ``path``, embedded in batches.

    Raises :class:`VideoError` if the video cannot be decoded completely (a caller that wants partial
    results uses :func:`scan_video` or :func:`iter_frames`).
    """

    def model(frames: list[Any], images: list[np.ndarray]) -> np.ndarray:
        return embedder.embed_arrays(np.stack(images))

    out: list[tuple[float, int, np.ndarray]] = []
    # decoding and normalising overlap the model, as in scan_video
    with closing(
        pipelined(
            iter_frames(path, "keyframes", dedupe=dedupe),
            lambda f: embedder.normalise(f.rgb),
            model,
            batch_size=batch_size,
        )
    ) as stream:
        for done in stream:
            if done.error is not None:
                raise done.error
            out.append((done.item.pts_seconds, done.item.index, done.output))
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


def _serialised(search: FrameSearch) -> FrameSearch:
    """``search`` shared by decoder threads: forward passes and searches take turns.

    Serialising is deliberate: torch already spreads one forward pass over every core, so two concurrent
    passes only fight for the same cores, while decoding (in FFmpeg, outside the GIL) overlaps freely.
    """
    lock = threading.Lock()

    def serial(images: list[np.ndarray]) -> list[list[Match]]:
        with lock:
            return search(images)

    return serial


def _video_bar(show: bool, total: int, desc: str) -> Any:
    """A bar counting finished videos (disabled when ``show`` is false)."""
    from .._progress import progress_bar

    return progress_bar(show, total, desc, unit="video")


def scan_videos(
    paths: Sequence[str | os.PathLike],
    embedder: Embedder,
    store: ReferenceStore,
    *,
    k: int = 5,
    threshold: float = 0.5,
    mode: SampleMode = "keyframes",
    fps: float | None = None,
    batch_size: int | str | BatchSizer = 16,
    dedupe: bool = True,
    dedupe_threshold: float = DEFAULT_DEDUPE_THRESHOLD,
    search: FrameSearch | None = None,
    workers: int = 1,
    progress: bool = False,
) -> Iterator[VideoReport]:
    """Scan ``paths`` (files; expand folders with :func:`iter_video_files`) and yield reports as they finish;
    frames decided by ``search`` (see :func:`scan_video`).

    ``workers`` > 1 decodes that many videos concurrently in threads sharing one model (see the module
    notes); report order is then completion order. Memory: ``workers x 3 x batch_size`` normalised frames.
    """
    if workers < 1:
        raise ConfigError(f"workers={workers} must be >= 1")
    kwargs: dict[str, Any] = dict(
        k=k,
        threshold=threshold,
        mode=mode,
        fps=fps,
        batch_size=batch_size,
        dedupe=dedupe,
        dedupe_threshold=dedupe_threshold,
        search=search,
    )
    # Validate the sampling options once, up front, instead of once per video.
    FrameReader("", mode, fps, dedupe, dedupe_threshold)
    with _video_bar(progress, len(paths), "scanning videos") as bar:
        if workers == 1:
            for p in paths:
                report = scan_video(p, embedder, store, **kwargs)
                bar.update(1)
                yield report
            return
        kwargs["search"] = _serialised(search or cosine_search(embedder, store, k, threshold))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="id2-video") as pool:
            futures = [pool.submit(scan_video, p, embedder, store, **kwargs) for p in paths]
            for fut in as_completed(futures):
                bar.update(1)
                yield fut.result()
