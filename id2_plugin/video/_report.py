"""What a scan reports: matched frames, per-reference summaries, the per-video report."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..types import Match

if TYPE_CHECKING:
    pass


@dataclass(frozen=True)
class FrameHit:
    """A sampled frame whose embedding matched at least one reference (``matches`` best first).

    ``until`` ends the time its content was on screen, as far as sampling can tell: the timestamp of
    the next sampled frame (the next keyframe, or the next ``fps`` sample; near-duplicates folded into
    this frame extend it), or the end of the video for the last one.
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
        matches = tuple(
            Match(**{**m, "labels": tuple(m.get("labels", ())), "signals": tuple((m.get("signals") or {}).items())})
            for m in d["matches"]
        )
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
        return cls(
            hits=[FrameHit.from_dict(h) for h in d.get("hits", ())],
            summary=[ReferenceSummary.from_dict(s) for s in d.get("summary", ())],
            **kwargs,
        )


class _Summariser:
    """Folds frame hits into one :class:`ReferenceSummary` per reference."""

    def __init__(self) -> None:
        self._acc: dict[str, dict[str, Any]] = {}

    def add(self, hit: FrameHit) -> None:
        for m in hit.matches:
            a = self._acc.get(m.reference_id)
            if a is None:
                self._acc[m.reference_id] = dict(
                    reference_id=m.reference_id,
                    uri=m.uri,
                    sha256=m.sha256,
                    labels=tuple(m.labels),
                    first_timestamp=hit.timestamp,
                    last_timestamp=hit.until,
                    best_score=m.score,
                    best_timestamp=hit.timestamp,
                    best_frame_index=hit.frame_index,
                    frames=1,
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
    """A kept frame on its way to the model: the decoded pixels (dropped once normalised) and what the report needs."""

    index: int
    timestamp: float
    is_key: bool
    rgb: np.ndarray | None
    until: float
