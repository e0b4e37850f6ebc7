"""Video keyframe scanning: decode with PyAV, sample frames, drop near-duplicates, embed, query the store.

The unit of work is one video (:func:`scan_video` -> :class:`VideoReport`); :func:`scan_videos` runs many
(optionally with decoder threads); :meth:`id2_plugin.pipeline.Pipeline.scan_videos` runs the same per-video
function on a Ray cluster when given a :class:`~id2_plugin.ray_executor.RayExecutor`.

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
  frame) means a slow drift is still sampled once it has accumulated.
* **Time spans.** A sampled frame's content counts as on screen until the next sampled frame arrives
  (the next keyframe, or the next ``fps`` sample; a dropped duplicate does not end it) or the video ends
  (``FrameHit.until``), so a static 2 s shot with one keyframe reports 2 s, not an instant. Encoders put
  keyframes at scene cuts, which is what makes this the natural bound in keyframe mode.
* **Bounded memory.** Frames are decoded and normalised in threads while the model embeds the previous
  batch: at most ``batch_size`` normalised (``S x S x 3``) images in the model plus twice that many
  waiting, and two decoded frames held by the reader; a decoded frame is dropped as soon as it is
  normalised. A report keeps only the (small) metadata of matched frames.
* **Decisions.** Frames are decided by a ``search`` function (normalised frames -> matches at or above
  the threshold). :meth:`~id2_plugin.pipeline.Pipeline.scan_videos` passes identification's own (the
  decision model, its operating point and the query-window rule), so a frame is a MATCH exactly when the
  same image given to ``query`` would be; called directly without one, the store's cosine decides.
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

from ._decode import DEFAULT_DEDUPE_THRESHOLD, VIDEO_EXTENSIONS, Frame, FrameReader, SampleMode, VideoError, iter_frames
from ._output import VideoReportWriter, format_report_text
from ._report import FrameHit, ReferenceSummary, VideoReport
from ._scan import FrameSearch, cosine_search, embed_keyframes, iter_video_files, scan_video, scan_videos

__all__ = [
    "DEFAULT_DEDUPE_THRESHOLD",
    "VIDEO_EXTENSIONS",
    "Frame",
    "FrameReader",
    "FrameHit",
    "FrameSearch",
    "ReferenceSummary",
    "SampleMode",
    "VideoError",
    "VideoReport",
    "VideoReportWriter",
    "cosine_search",
    "embed_keyframes",
    "format_report_text",
    "iter_frames",
    "iter_video_files",
    "scan_video",
    "scan_videos",
]
