"""Streaming output of reports: JSON Lines, CSV, text."""

from __future__ import annotations

import csv
import io
import json
from typing import IO, TYPE_CHECKING, Literal

from ..errors import ConfigError

if TYPE_CHECKING:
    pass
from ._report import VideoReport

_CSV_FIELDS = (
    "video",
    "frame_index",
    "timestamp",
    "until",
    "is_key",
    "rank",
    "reference_id",
    "uri",
    "sha256",
    "score",
    "error",
)


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
                    self._csv.writerow(
                        (
                            report.path,
                            hit.frame_index,
                            f"{hit.timestamp:.3f}",
                            f"{hit.until:.3f}",
                            int(hit.is_key),
                            m.rank,
                            m.reference_id,
                            m.uri,
                            m.sha256,
                            f"{m.score:.6f}",
                            "",
                        )
                    )
            if report.error:
                self._csv.writerow((report.path, "", "", "", "", "", "", "", "", "", report.error))
        self.stream.flush()


def format_report_text(report: VideoReport) -> str:
    """A short human-readable summary of one report (the CLI's default output)."""
    buf = io.StringIO()
    status = "ERROR" if report.error else ("MATCH" if report.is_match else "NO MATCH")
    dur = f"{report.duration_s:.1f} s" if report.duration_s is not None else "? s"
    buf.write(
        f"{report.path}: {status} ({dur}, {report.frames_sampled} sampled frames, "
        f"{report.frames_embedded} embedded, {report.duplicates_dropped} near-duplicates dropped)\n"
    )
    for s in report.summary:
        buf.write(
            f"  {s.reference_id} score={s.best_score:.4f} at {s.best_timestamp:.2f} s (frame "
            f"{s.best_frame_index}), seen {s.first_timestamp:.2f}-{s.last_timestamp:.2f} s in {s.frames} "
            f"frames  {s.uri}\n"
        )
    if report.error:
        buf.write(f"  error ({report.error_kind}): {report.error}\n")
    return buf.getvalue()
