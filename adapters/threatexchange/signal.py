"""The two ThreatExchange signal types: ``id2`` (photos) and ``id2_video`` (the kept keyframes of a video).

**Signals** (:mod:`~id2_plugin.adapters.threatexchange.signal_format`): ``id2:2:<digest>:<payload>`` for
photos and ``id2_video:2:<digest>:<ms>.<frame>.<payload>~...`` for videos. ``digest`` names the embedder
(encoder, input size, W, fusion weights) that made the hash; hashes of different embedders are never
compared, and a signal of another embedder (or dimension) is refused by ``validate_signal_str``
(:mod:`~id2_plugin.adapters.threatexchange.compare`). Version-1 strings (bare float16 hex, JSON videos) are
refused with a message pointing to :meth:`~_ID2SignalBase.upgrade_legacy_signal`.

**Distance.** ``1 - cosine``; a match is ``distance <= 1 - cosine_threshold``, the threshold read at every
match (:mod:`~id2_plugin.adapters.threatexchange.settings` says from where;
:meth:`~_ID2SignalBase.threshold_source` says which applies now).
"""

from __future__ import annotations

import logging
import os
import pathlib
import typing as t

import numpy as np
from threatexchange.cli.exceptions import CommandError
from threatexchange.content_type.content_base import ContentType
from threatexchange.content_type.photo import PhotoContent
from threatexchange.content_type.video import VideoContent
from threatexchange.signal_type.index import SignalTypeIndex
from threatexchange.signal_type.signal_base import BytesHasher, FileHasher, SignalComparisonResult, SignalType

from id2_plugin.errors import MediaError
from id2_plugin.video import embed_keyframes

from .._shared import SerialEmbedder
from .compare import SignalIdentityError, check_comparable, check_embedder_in_use, distance
from .index import ID2PhotoIndex, ID2VideoIndex
from .settings import (
    clear_overrides,
    cosine_threshold_in_use,
    distance_threshold_in_use,
    embedder_in_use,
    example_vectors,
    set_overrides,
)
from .signal_format import (
    PHOTO,
    VERSION,
    VIDEO,
    Parsed,
    format_photo,
    format_video,
    parse_photo,
    parse_video,
)
from .signal_format import identity_digest as digest_of

__all__ = [
    "HashError",
    "ID2PhotoSignal",
    "ID2VideoSignal",
    "format_video_signal",
    "parse_video_signal",
]

logger = logging.getLogger(__name__)


class HashError(CommandError, ValueError):
    """A file or bytes could not be hashed: the ``threatexchange`` CLI prints it and exits 2."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 2)


class _ID2SignalBase(SignalType):
    """What the photo and video signals share: configuration, identity checks, distance."""

    @classmethod
    def configure(
        cls,
        *,
        embedder: t.Any = None,
        cosine_threshold: float | None = None,
        config: str | os.PathLike[str] | None = None,
        threads: int | None = None,
    ) -> None:
        """Set, for this process, what the id2 config would otherwise decide.

        ``embedder``: a ready :class:`~id2_plugin.Embedder`; ``cosine_threshold``: the match threshold;
        ``config``: the id2 YAML to read (embedder section and ``match.threshold``) instead of
        ``$ID2_CONFIG`` / ``./id2.yaml``; ``threads``: cap on torch / ONNX Runtime threads (the same as
        ``$ID2_THREADS``; applies to models built afterwards). ``None`` leaves a setting unchanged;
        applies to both the photo and the video signal.
        """
        set_overrides(embedder=embedder, cosine_threshold=cosine_threshold, config=config, threads=threads)

    @classmethod
    def reset_configuration(cls) -> None:
        """Drop :meth:`configure` overrides and cached examples (back to the id2 config)."""
        clear_overrides()

    @classmethod
    def embedder(cls) -> SerialEmbedder:
        """The embedder in use (built on first call, after applying the thread cap)."""
        return embedder_in_use()

    @classmethod
    def identity_digest(cls) -> str:
        """Digest of the embedder in use, as written into every signal it makes."""
        return digest_of(embedder_in_use().identity)

    @classmethod
    def distance_threshold(cls) -> float:
        """Largest ``1 - cosine`` distance that is a match, read now (see the module docstring)."""
        return distance_threshold_in_use()

    @classmethod
    def threshold_source(cls) -> str:
        """Where :meth:`distance_threshold` comes from: ``configure()``, a config file path, or the default."""
        return cosine_threshold_in_use()[1]

    @classmethod
    def parse(cls, signal_str: str) -> Parsed:
        """Decode a signal string of either format version; :class:`ValueError` if malformed."""
        raise NotImplementedError

    @classmethod
    def vectors(cls, signal_str: str) -> np.ndarray:
        """The signal as ``N x dim`` unit vectors (one row for a photo, one per keyframe for a video)."""
        return cls.parse(signal_str).vectors

    @classmethod
    def check_current(cls, parsed: Parsed) -> None:
        """Raise :class:`~id2_plugin.adapters.threatexchange.compare.SignalIdentityError` unless ``parsed`` was
        made by the embedder in use."""
        check_embedder_in_use(cls.get_name(), parsed)

    @classmethod
    def validate_signal_str(cls, signal_str: str) -> str:
        """Accept only well-formed signals of the embedder in use (identity and dimension)."""
        s = signal_str.strip()
        cls.check_current(cls.parse(s))
        return s

    @classmethod
    def compare_hash(cls, hash1: str, hash2: str) -> SignalComparisonResult:
        a, b = cls.parse(hash1), cls.parse(hash2)
        check_comparable(cls.get_name(), a, b)
        cos = float(np.max(a.vectors @ b.vectors.T))
        return SignalComparisonResult.from_simple_dist(distance(cos), cls.distance_threshold())

    @classmethod
    def upgrade_legacy_signal(cls, signal_str: str) -> str:
        """A version-1 (unversioned) signal restamped with the digest of the embedder in use.

        Only call it for strings you know this embedder made (same encoder, W and fusion weights as when
        they were hashed): the old format does not record it, which is why it is refused everywhere else.
        Raises :class:`~id2_plugin.adapters.threatexchange.compare.SignalIdentityError` when the dimension
        does not fit the embedder in use.
        """
        parsed = cls.parse(signal_str)
        if parsed.version == VERSION:
            cls.check_current(parsed)
            return signal_str.strip()
        emb = cls.embedder()
        if parsed.dim != emb.dim:
            raise SignalIdentityError(
                f"unversioned {cls.get_name()} signal is {parsed.dim}-d; the embedder in use makes {emb.dim}-d "
                "hashes, so another embedder made it: re-hash the content",
                "other embedder",
            )
        return cls._format(parsed, digest_of(emb.identity))

    @classmethod
    def _format(cls, parsed: Parsed, digest: str) -> str:
        raise NotImplementedError


def _hash_error(name: str, reason: object) -> HashError:
    """``reason`` names the file (MediaError messages start with it)."""
    logger.warning("%s: cannot hash %s", name, reason)
    return HashError(f"{name}: cannot hash {reason}")


class ID2PhotoSignal(_ID2SignalBase, BytesHasher):
    """ID2 embedding of a photo: finds the original of an AI-edited or degraded copy."""

    @classmethod
    def get_name(cls) -> str:
        return PHOTO

    @classmethod
    def get_content_types(cls) -> list[type[ContentType]]:
        return [PhotoContent]

    @classmethod
    def get_index_cls(cls) -> type[SignalTypeIndex]:
        return ID2PhotoIndex

    @classmethod
    def parse(cls, signal_str: str) -> Parsed:
        return parse_photo(signal_str)

    @classmethod
    def _format(cls, parsed: Parsed, digest: str) -> str:
        return format_photo(parsed.vectors[0], digest)

    @classmethod
    def hash_from_bytes(cls, bytes_: bytes) -> str:
        """Embed encoded image bytes; :class:`HashError` if they are not a readable image."""
        return cls._hash(bytes_)

    @classmethod
    def hash_from_file(cls, file: pathlib.Path) -> str:
        """Embed an image file; :class:`HashError` (the CLI exits 2 with its message) if that fails."""
        return cls._hash(pathlib.Path(file))

    @classmethod
    def _hash(cls, source: bytes | pathlib.Path) -> str:
        emb = cls.embedder()
        try:
            vec = emb.embed_one(source)
        except MediaError as exc:
            raise _hash_error(PHOTO, exc) from None
        return format_photo(vec, digest_of(emb.identity))

    @staticmethod
    def get_examples() -> list[str]:
        """Embeddings of three deterministic synthetic pictures, computed once per process and embedder."""
        emb = ID2PhotoSignal.embedder()
        digest = digest_of(emb.identity)
        return [format_photo(v, digest) for v in example_vectors(emb)]


class ID2VideoSignal(_ID2SignalBase, FileHasher):
    """Per-keyframe ID2 embeddings of a video; matches when any keyframe pair is close enough."""

    @classmethod
    def get_name(cls) -> str:
        return VIDEO

    @classmethod
    def get_content_types(cls) -> list[type[ContentType]]:
        return [VideoContent]

    @classmethod
    def get_index_cls(cls) -> type[SignalTypeIndex]:
        return ID2VideoIndex

    @classmethod
    def parse(cls, signal_str: str) -> Parsed:
        return parse_video(signal_str)

    @classmethod
    def _format(cls, parsed: Parsed, digest: str) -> str:
        return format_video([(ts, i, v) for (ts, i), v in zip(parsed.frames, parsed.vectors)], digest)

    @classmethod
    def hash_from_file(cls, file: pathlib.Path) -> str:
        """Embed the kept keyframes of a video file; :class:`HashError` if it cannot be decoded or has none."""
        emb = cls.embedder()
        try:
            frames = embed_keyframes(file, emb)  # type: ignore[arg-type]
        except MediaError as exc:
            raise _hash_error(VIDEO, exc) from None
        if not frames:
            raise _hash_error(VIDEO, f"{file}: no decodable keyframe")
        return format_video_signal(frames, digest_of(emb.identity))

    @staticmethod
    def get_examples() -> list[str]:
        """One synthetic three-keyframe "video" (the synthetic pictures at 0, 1 and 2 s)."""
        emb = ID2VideoSignal.embedder()
        frames = [(float(i), i * 25, v) for i, v in enumerate(example_vectors(emb))]
        return [format_video_signal(frames, digest_of(emb.identity))]


def format_video_signal(frames: t.Sequence[tuple[float, int, np.ndarray]], digest: str | None = None) -> str:
    """``[(timestamp_s, frame_index, unit vector), ...]`` -> ``id2_video`` signal.

    ``digest`` defaults to that of the embedder in use.
    """
    return format_video(frames, digest or ID2VideoSignal.identity_digest())


def parse_video_signal(signal_str: str) -> list[tuple[float, int, np.ndarray]]:
    """``id2_video`` signal (either version) -> ``[(timestamp_s, frame_index, unit vector)]``."""
    parsed = parse_video(signal_str)
    return [(ts, i, v) for (ts, i), v in zip(parsed.frames, parsed.vectors)]
