"""The signal strings of the id2 signal types: format version, embedder identity, compact payload.

Version 2 (what the adapter writes)::

    photo:  id2:2:<digest>:<payload>
    video:  id2_video:2:<digest>:<ms>.<frame>.<payload>~<ms>.<frame>.<payload>...

``digest`` is the first 12 hex digits of ``sha256(embedder.identity)`` (encoder weights, input size, W,
fusion weights): two hashes with different digests were made by different embedders and their distance
means nothing, so they are never compared. ``payload`` is the unit embedding scaled so its largest
component is +-127, as int8, base64url without padding: ``4 * dim / 3`` characters (1,024 for the 768-d
id2 signal with the shipped W, 1,707 for the fused 1,280-d default) instead of ``4 * dim`` hex digits; it
moves a cosine by < 1e-3. ``ms`` / ``frame`` are the keyframe's timestamp in milliseconds and its frame index. Every
character is URL-safe, so a signal can travel in a query string unescaped.

Version 1 (bare float16 hex for photos, ``{"id2_video": 1, ...}`` JSON for videos) still *parses*, as
:class:`Parsed` with ``digest=None``, so an operator can read and explicitly upgrade stored strings; the
signal types refuse to compare or index it (see ``docs/guides/omm-operator.md``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import typing as t
from dataclasses import dataclass

import numpy as np

from .._shared import decode_vector

__all__ = [
    "LEGACY",
    "PHOTO",
    "VERSION",
    "VIDEO",
    "Parsed",
    "format_photo",
    "format_video",
    "identity_digest",
    "parse_photo",
    "parse_video",
]

VERSION = 2
LEGACY = 1
#: the signal type names, which also open their signal strings
PHOTO = "id2"
VIDEO = "id2_video"
_DIGEST_LEN = 12
_MIN_DIM = 8
_B64URL = re.compile(r"^[A-Za-z0-9_-]+$")
_DIGEST = re.compile(rf"^[0-9a-f]{{{_DIGEST_LEN}}}$")
_FRAME = re.compile(r"^(-?\d+)\.(\d+)\.([A-Za-z0-9_-]+)$")


@dataclass(frozen=True)
class Parsed:
    """A decoded signal: ``vectors`` is ``N x dim`` unit float32 (one row per photo / keyframe)."""

    version: int
    digest: str | None
    vectors: np.ndarray
    #: ``(timestamp_s, frame_index)`` per row for videos, empty for photos
    frames: tuple[tuple[float, int], ...] = ()

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


def identity_digest(identity: str) -> str:
    """Short, stable digest of an embedder identity string (what a signal records)."""
    return hashlib.sha256(identity.encode()).hexdigest()[:_DIGEST_LEN]


def _encode_payload(vector: np.ndarray) -> str:
    v = np.asarray(vector, dtype=np.float32).reshape(-1)
    peak = float(np.max(np.abs(v))) if v.size else 0.0
    if not np.isfinite(v).all() or peak == 0.0:
        raise ValueError("embedding is zero or contains NaN / infinity")
    q = np.round(v * (127.0 / peak)).astype(np.int8)
    return base64.urlsafe_b64encode(q.tobytes()).decode().rstrip("=")


def _decode_payload(payload: str) -> np.ndarray:
    if not _B64URL.match(payload):
        raise ValueError("id2 payload must be base64url (A-Z a-z 0-9 - _)")
    try:
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("id2 payload is not valid base64url") from None
    if len(raw) < _MIN_DIM:
        raise ValueError(f"id2 payload has {len(raw)} values; an id2 embedding has at least {_MIN_DIM}")
    v = np.frombuffer(raw, dtype=np.int8).astype(np.float32)
    norm = float(np.linalg.norm(v))
    if norm == 0.0:
        raise ValueError("id2 payload is all zeros")
    return v / norm


def _versioned(signal: str, name: str) -> tuple[str, tuple[str, str] | None]:
    """The stripped signal and its ``(digest, body)``, or None there when it is not in version 2."""
    s = signal.strip()
    if not s:
        raise ValueError(f"empty {name} hash (the media could not be hashed?)")
    return s, _split(s, name)


def _split(signal: str, name: str) -> tuple[str, str] | None:
    """``name:2:digest:body`` -> ``(digest, body)``; None when the string does not start with ``name:``."""
    parts = signal.split(":")
    if parts[0].lower() != name:
        return None
    if parts[0] != name:
        # base64url is case-sensitive: a case-changed payload decodes into another vector, so refuse it by name
        raise ValueError(
            f"{name} signal starts with {parts[0]!r}, not {name!r}: its case was changed (by a tool "
            "that upper-cases hashes?), which also changes its case-sensitive base64url payload; "
            "store and send the signal exactly as it was hashed"
        )
    if len(parts) != 4:
        raise ValueError(f"{name} signal must look like {name}:{VERSION}:<digest>:<payload>")
    if parts[1] != str(VERSION):
        raise ValueError(
            f"{name} signal format version {parts[1]!r} is not supported (this id2-plugin reads {VERSION})"
        )
    if not _DIGEST.match(parts[2]):
        raise ValueError(f"{name} signal embedder digest {parts[2]!r} must be {_DIGEST_LEN} lowercase hex digits")
    return parts[2], parts[3]


def format_photo(vector: np.ndarray, digest: str) -> str:
    return f"{PHOTO}:{VERSION}:{digest}:{_encode_payload(vector)}"


def parse_photo(signal: str) -> Parsed:
    """A photo signal (version 2, or a version-1 bare hex hash); :class:`ValueError` if malformed."""
    s, split = _versioned(signal, PHOTO)
    if split is None:
        return Parsed(LEGACY, None, decode_vector(s)[None, :])
    return Parsed(VERSION, split[0], _decode_payload(split[1])[None, :])


def format_video(frames: t.Sequence[tuple[float, int, np.ndarray]], digest: str) -> str:
    if not frames:
        raise ValueError("a video signal needs at least one frame")
    body = "~".join(f"{round(float(ts) * 1000)}.{int(idx)}.{_encode_payload(v)}" for ts, idx, v in frames)
    return f"{VIDEO}:{VERSION}:{digest}:{body}"


def parse_video(signal: str) -> Parsed:
    """A video signal (version 2, or version-1 JSON); :class:`ValueError` if malformed."""
    s, split = _versioned(signal, VIDEO)
    if split is None:
        return _parse_video_v1(s)
    digest, body = split
    rows = []
    for part in body.split("~"):
        m = _FRAME.match(part)
        if m is None:
            raise ValueError("each id2_video frame must be <milliseconds>.<frame index>.<payload>")
        rows.append((int(m[1]) / 1000.0, int(m[2]), _decode_payload(m[3])))
    return _video(VERSION, digest, rows)


def _parse_video_v1(signal: str) -> Parsed:
    try:
        doc = json.loads(signal)
    except json.JSONDecodeError:
        raise ValueError("id2_video signal must look like id2_video:2:<digest>:<frames>") from None
    if not isinstance(doc, dict) or doc.get("id2_video") != LEGACY or not isinstance(doc.get("frames"), list):
        raise ValueError('a version-1 id2_video signal looks like {"id2_video": 1, "frames": [[t, index, hex], ...]}')
    rows = []
    for row in doc["frames"]:
        if not (isinstance(row, list) and len(row) == 3 and isinstance(row[2], str)):
            raise ValueError("each version-1 id2_video frame must be [timestamp, frame_index, hex]")
        rows.append((float(row[0]), int(row[1]), decode_vector(row[2])))
    return _video(LEGACY, None, rows)


def _video(version: int, digest: str | None, rows: list[tuple[float, int, np.ndarray]]) -> Parsed:
    if not rows:
        raise ValueError("id2_video signal has no frame")
    if len({len(v) for _, _, v in rows}) != 1:
        raise ValueError("id2_video frames have different dimensions")
    return Parsed(version, digest, np.stack([v for _, _, v in rows]), tuple((ts, idx) for ts, idx, _ in rows))
