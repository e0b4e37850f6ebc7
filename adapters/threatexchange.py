"""ThreatExchange / Hasher-Matcher-Actioner signal types for ID2 embeddings (photo and video).

Use from the ``threatexchange`` CLI::

    threatexchange config extensions add id2_plugin.adapters.threatexchange
    threatexchange hash photo original.jpg             # -> "id2 <hex>"
    threatexchange match photo suspected_edit.jpg      # -> "id2 0.1412 (collab) ..."

or list the classes in OpenMediaMatch's ``omm_config.py`` (OMM does not read ``TX_MANIFEST``)::

    STORAGE_IFACE_INSTANCE = DefaultOMMStore(signal_types=[PdqSignal, VideoMD5Signal, ID2PhotoSignal])

**Signals.** ``id2`` (photos): the L2-normalised ID2 embedding as little-endian float16 hex (see
:mod:`id2_plugin.adapters._shared`: 5,120 characters for the default fused 1,280-d embedding, 3,072
for the id2 signal alone (768-d W), 128 KB for the raw 32,768-d latent). ``id2_video``: compact JSON ``{"id2_video": 1, "frames":
[[timestamp, frame_index, hex], ...]}`` of the kept keyframes (:func:`id2_plugin.video.embed_keyframes`).

**Distance.** ``1 - cosine`` (0 = same embedding, 2 = opposite); for videos the smallest distance between
any query keyframe and any reference keyframe. A match is ``distance <= 1 - match.threshold`` with the
cosine threshold from the id2 config (``$ID2_CONFIG`` / ``./id2.yaml``, default 0.5), or the value given
to :meth:`ID2PhotoSignal.configure`.

**Index.** :class:`ID2PhotoIndex` / :class:`ID2VideoIndex` keep vectors in a FAISS inner-product index
(exact) and serialise without pickle: ``faiss.serialize_index`` plus JSON for the entries
(:mod:`id2_plugin.adapters._jsoncodec`).

**Model.** Nothing is loaded at import. The embedder (:func:`id2_plugin.identify.build_embedder` on the
config's ``embedder`` section: TAEF2 + the shipped W if present) is built on the first hash, once per
process; ``get_examples()`` embeds three synthetic pictures on first call and caches them, so example
signals always have the dimension of the embedder actually in use.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import pathlib
import struct
import threading
import typing as t

import numpy as np
from threatexchange.content_type.content_base import ContentType
from threatexchange.content_type.photo import PhotoContent
from threatexchange.content_type.video import VideoContent
from threatexchange.extensions.manifest import ThreatExchangeExtensionManifest
from threatexchange.signal_type import index
from threatexchange.signal_type.signal_base import BytesHasher, FileHasher, SignalComparisonResult, SignalType

from id2_plugin._lazy import require
from id2_plugin.errors import MediaError

from . import _jsoncodec
from ._shared import SerialEmbedder, check_same_dim, decode_vector, encode_vector, get_config, get_embedder, synthetic_images

__all__ = [
    "ID2PhotoIndex",
    "ID2PhotoSignal",
    "ID2VideoIndex",
    "ID2VideoSignal",
    "TX_MANIFEST",
    "format_video_signal",
    "index_to_bytes",
    "parse_video_signal",
]

logger = logging.getLogger(__name__)

#: Distances are rounded so the CLI prints short, stable numbers (6 decimals is far below any threshold).
_DIST_DECIMALS = 6
_VIDEO_FORMAT = 1


class _Settings:
    """Process-wide overrides set by :meth:`_ID2SignalBase.configure` (else the id2 config is used)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.embedder: SerialEmbedder | None = None
        self.cosine_threshold: float | None = None
        self.examples: dict[tuple[str, str], list[str]] = {}


_settings = _Settings()


class _ID2SignalBase(SignalType):
    """What the photo and video signals share: configuration, distance and the vector view of a signal."""

    @classmethod
    def configure(cls, *, embedder: t.Any = None, cosine_threshold: float | None = None) -> None:
        """Use a ready :class:`~id2_plugin.Embedder` and / or a cosine match threshold in this process.

        Hosts that already hold an embedder (or tests) call this instead of relying on the id2 config.
        ``None`` leaves a setting unchanged; applies to both the photo and the video signal.
        """
        with _settings.lock:
            if embedder is not None:
                _settings.embedder = embedder if isinstance(embedder, SerialEmbedder) else SerialEmbedder(embedder)
            if cosine_threshold is not None:
                if not -1.0 <= cosine_threshold <= 1.0:
                    raise ValueError(f"cosine_threshold={cosine_threshold} must lie in [-1, 1]")
                _settings.cosine_threshold = float(cosine_threshold)

    @classmethod
    def reset_configuration(cls) -> None:
        """Drop :meth:`configure` overrides and cached examples (back to the id2 config)."""
        with _settings.lock:
            _settings.embedder = None
            _settings.cosine_threshold = None
            _settings.examples.clear()

    @classmethod
    def embedder(cls) -> SerialEmbedder:
        """The embedder in use (built on first call)."""
        with _settings.lock:
            configured = _settings.embedder
        return configured if configured is not None else get_embedder()

    @classmethod
    def distance_threshold(cls) -> float:
        """Largest ``1 - cosine`` distance that is a match."""
        with _settings.lock:
            cos = _settings.cosine_threshold
        if cos is None:
            cos = get_config().match.threshold
        return 1.0 - cos

    @classmethod
    def vectors(cls, signal_str: str) -> np.ndarray:
        """The signal as ``N x dim`` unit vectors (one row for a photo, one per keyframe for a video)."""
        raise NotImplementedError

    @classmethod
    def compare_hash(cls, hash1: str, hash2: str) -> SignalComparisonResult:
        a, b = cls.vectors(hash1), cls.vectors(hash2)
        check_same_dim(a, b)
        cos = float(np.max(a @ b.T))
        return SignalComparisonResult.from_simple_dist(_distance(cos), cls.distance_threshold())

    @classmethod
    def validate_signal_str(cls, signal_str: str) -> str:
        s = super().validate_signal_str(signal_str)
        cls.vectors(s)
        return s


def _distance(cos: float) -> float:
    # Clamped: float rounding can push the cosine of a vector with itself a hair above 1.
    return round(min(2.0, max(0.0, 1.0 - cos)), _DIST_DECIMALS)


class ID2PhotoSignal(_ID2SignalBase, BytesHasher):
    """ID2 embedding of a photo: finds the original of an AI-edited or degraded copy."""

    @classmethod
    def get_name(cls) -> str:
        return "id2"

    @classmethod
    def get_content_types(cls) -> list[type[ContentType]]:
        return [PhotoContent]

    @classmethod
    def get_index_cls(cls) -> type[index.SignalTypeIndex]:
        return ID2PhotoIndex

    @classmethod
    def validate_signal_str(cls, signal_str: str) -> str:
        s = signal_str.strip().lower()
        decode_vector(s)
        return s

    @classmethod
    def vectors(cls, signal_str: str) -> np.ndarray:
        return decode_vector(signal_str)[None, :]

    @classmethod
    def hash_from_bytes(cls, bytes_: bytes) -> str:
        """Embed encoded image bytes; ``""`` (the ThreatExchange convention) if they are not an image."""
        try:
            return encode_vector(cls.embedder().embed_one(bytes_))
        except MediaError as exc:
            logger.warning("id2: cannot hash %s", exc)
            return ""

    @classmethod
    def hash_from_file(cls, file: pathlib.Path) -> str:
        try:
            data = pathlib.Path(file).read_bytes()
        except OSError as exc:
            logger.warning("id2: cannot read %s: %s", file, exc)
            return ""
        return cls.hash_from_bytes(data)

    @staticmethod
    def get_examples() -> list[str]:
        """Embeddings of three deterministic synthetic pictures, computed once per process and embedder."""
        return _example_hashes(ID2PhotoSignal.embedder())


class ID2VideoSignal(_ID2SignalBase, FileHasher):
    """Per-keyframe ID2 embeddings of a video; matches when any keyframe pair is close enough."""

    @classmethod
    def get_name(cls) -> str:
        return "id2_video"

    @classmethod
    def get_content_types(cls) -> list[type[ContentType]]:
        return [VideoContent]

    @classmethod
    def get_index_cls(cls) -> type[index.SignalTypeIndex]:
        return ID2VideoIndex

    @classmethod
    def vectors(cls, signal_str: str) -> np.ndarray:
        return np.stack([decode_vector(h) for _, _, h in parse_video_signal(signal_str)])

    @classmethod
    def validate_signal_str(cls, signal_str: str) -> str:
        # Re-serialised so equal signals compare equal as strings (whitespace, hex case).
        return format_video_signal(parse_video_signal(signal_str))

    @classmethod
    def hash_from_file(cls, file: pathlib.Path) -> str:
        """Embed the kept keyframes of a video file; ``""`` if it cannot be decoded or has no frame."""
        from id2_plugin.video import embed_keyframes

        try:
            frames = embed_keyframes(file, cls.embedder())  # type: ignore[arg-type]
        except MediaError as exc:
            logger.warning("id2_video: cannot hash %s", exc)
            return ""
        if not frames:
            logger.warning("id2_video: no decodable keyframe in %s", file)
            return ""
        return format_video_signal(frames)

    @staticmethod
    def get_examples() -> list[str]:
        """One synthetic three-keyframe "video" (the synthetic pictures at 0, 1 and 2 s)."""
        hashes = _example_hashes(ID2VideoSignal.embedder())
        return [format_video_signal([(float(i), i * 25, h) for i, h in enumerate(hashes)])]


def _example_hashes(emb: SerialEmbedder) -> list[str]:
    """Hashes of three synthetic pictures, computed once per process and embedder (both signals use them)."""
    key = ("__pictures__", emb.identity)
    with _settings.lock:
        found = _settings.examples.get(key)
    if found is None:
        size = emb.input_size
        vecs = emb.embed_arrays(np.stack([emb.normalise(img) for img in synthetic_images(3, size)]))
        found = [encode_vector(v) for v in vecs]
        with _settings.lock:
            _settings.examples[key] = found
    return list(found)


def format_video_signal(frames: t.Sequence[tuple[float, int, np.ndarray | str]]) -> str:
    """``[(timestamp, frame_index, unit vector or its hex), ...]`` -> ``id2_video`` signal (one line)."""
    if not frames:
        raise ValueError("a video signal needs at least one frame")
    rows = [[round(float(ts), 6), int(idx), v if isinstance(v, str) else encode_vector(v)] for ts, idx, v in frames]
    return json.dumps({"id2_video": _VIDEO_FORMAT, "frames": rows}, separators=(",", ":"))


def parse_video_signal(signal_str: str) -> list[tuple[float, int, str]]:
    """``id2_video`` signal -> ``[(timestamp, frame_index, lowercase hex)]``; :class:`ValueError` if malformed.

    The hex strings are kept as they are (not re-encoded), so validating a signal twice gives the same
    string and duplicates are recognised.
    """
    try:
        doc = json.loads(signal_str)
    except json.JSONDecodeError as exc:
        raise ValueError(f"id2_video signal is not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("id2_video") != _VIDEO_FORMAT or not isinstance(doc.get("frames"), list):
        raise ValueError('id2_video signal must look like {"id2_video": 1, "frames": [[t, index, hex], ...]}')
    frames = []
    dims = set()
    for row in doc["frames"]:
        if not (isinstance(row, list) and len(row) == 3 and isinstance(row[2], str)):
            raise ValueError("each id2_video frame must be [timestamp, frame_index, hex]")
        hex_ = row[2].strip().lower()
        dims.add(len(decode_vector(hex_)))
        frames.append((float(row[0]), int(row[1]), hex_))
    if not frames:
        raise ValueError("id2_video signal has no frame")
    if len(dims) != 1:
        raise ValueError("id2_video frames have different dimensions")
    return frames


# -- index ----------------------------------------------------------------------------------------------
_MAGIC = b"ID2TXIX\x01"
_U64 = struct.Struct("<Q")


class _ID2Index(index.SignalTypeIndex[index.T]):
    """Exact FAISS inner-product index over the signal vectors, with per-signal entry lists.

    A signal string added twice keeps one set of vectors and appends the entry (as the interface asks).
    ``query`` returns every signal within the distance threshold, best (smallest distance) first, each
    signal's entries in insertion order.
    """

    _SIGNAL_TYPE: type[_ID2SignalBase]

    def __init__(self, threshold: float | None = None) -> None:
        #: largest ``1 - cosine`` distance returned by :meth:`query` (default: the signal type's)
        self.threshold = self._SIGNAL_TYPE.distance_threshold() if threshold is None else float(threshold)
        self._faiss: t.Any = None
        self._dim: int | None = None
        self._row_slot: list[int] = []
        self._slots: list[list[index.T]] = []
        self._slot_of: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._slots)

    @property
    def dim(self) -> int | None:
        return self._dim

    @staticmethod
    def _key(signal: str) -> str:
        return hashlib.sha256(signal.encode()).hexdigest()

    def _ensure(self, dim: int) -> None:
        if self._faiss is None:
            faiss = require("faiss")
            self._faiss, self._dim = faiss.IndexFlatIP(dim), dim
        elif dim != self._dim:
            raise ValueError(
                f"{self._SIGNAL_TYPE.get_name()} index holds {self._dim}-dim signals; got a {dim}-dim one (made "
                "by another embedder)"
            )

    def add(self, signal_str: str, entry: index.T) -> None:
        self.add_all([(signal_str, entry)])

    def add_all(self, entries: t.Iterable[tuple[str, index.T]]) -> None:
        pending: list[np.ndarray] = []
        for signal_str, entry in entries:
            sig = self._SIGNAL_TYPE.validate_signal_str(signal_str)
            key = self._key(sig)
            slot = self._slot_of.get(key)
            if slot is None:
                vecs = self._SIGNAL_TYPE.vectors(sig)
                self._ensure(vecs.shape[1])
                slot = len(self._slots)
                self._slot_of[key] = slot
                self._slots.append([])
                self._row_slot.extend([slot] * len(vecs))
                pending.append(vecs)
            self._slots[slot].append(entry)
        if pending:
            self._faiss.add(np.ascontiguousarray(np.concatenate(pending), dtype=np.float32))

    def query(self, query: str) -> list[index.IndexMatch[index.T]]:
        if self._faiss is None or not self._slots:
            return []
        q = self._SIGNAL_TYPE.vectors(self._SIGNAL_TYPE.validate_signal_str(query))
        if q.shape[1] != self._dim:
            raise ValueError(f"query has {q.shape[1]} dims but the index holds {self._dim}-dim signals")
        # IndexFlatIP.range_search keeps scores strictly above the radius; the tiny margin makes the
        # threshold inclusive like compare_hash, and the exact test below decides.
        radius = 1.0 - self.threshold - 1e-6
        lims, scores, rows = self._faiss.range_search(np.ascontiguousarray(q, dtype=np.float32), radius)
        best: dict[int, float] = {}
        for score, row in zip(scores[: lims[-1]], rows[: lims[-1]]):
            slot = self._row_slot[int(row)]
            if float(score) > best.get(slot, -np.inf):
                best[slot] = float(score)
        ranked = sorted(((_distance(cos), slot) for slot, cos in best.items()), key=lambda x: (x[0], x[1]))
        out: list[index.IndexMatch[index.T]] = []
        for dist, slot in ranked:
            if dist > self.threshold:
                continue
            info = index.SignalSimilarityInfoWithSingleDistance[float](dist)
            out.extend(index.IndexMatch(info, entry) for entry in self._slots[slot])
        return out

    def serialize(self, fout: t.BinaryIO) -> None:
        """Write ``magic | u64 len | JSON header+entries | u64 len | faiss.serialize_index bytes``."""
        header = {
            "format": "id2-threatexchange-index",
            "version": 1,
            "signal_type": self._SIGNAL_TYPE.get_name(),
            "dim": self._dim,
            "row_slot": self._row_slot,
            "keys": list(self._slot_of),
            "entries": _jsoncodec.encode(self._slots),
        }
        blob = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
        faiss_bytes = b""
        if self._faiss is not None:
            faiss_bytes = require("faiss").serialize_index(self._faiss).tobytes()
        fout.write(_MAGIC)
        fout.write(_U64.pack(len(blob)))
        fout.write(blob)
        fout.write(_U64.pack(len(faiss_bytes)))
        fout.write(faiss_bytes)

    @classmethod
    def deserialize(cls, fin: t.BinaryIO) -> t.Any:
        name = cls._SIGNAL_TYPE.get_name()
        if fin.read(len(_MAGIC)) != _MAGIC:
            raise ValueError(f"not an id2 {name} index (bad magic): was it written by another index class?")
        header = json.loads(_read_block(fin, name))
        if header.get("format") != "id2-threatexchange-index" or header.get("version") != 1:
            raise ValueError(f"unsupported id2 index format {header.get('format')!r} v{header.get('version')}")
        if header.get("signal_type") != name:
            raise ValueError(f"index was built for signal type {header.get('signal_type')!r}, not {name!r}")
        faiss_bytes = _read_block(fin, name)
        out = cls()
        slots = _jsoncodec.decode(header["entries"])
        keys, row_slot = header["keys"], header["row_slot"]
        if not (isinstance(slots, list) and len(keys) == len(slots) and all(0 <= s < len(slots) for s in row_slot)):
            raise ValueError(f"corrupt id2 {name} index: entries, keys and rows disagree")
        if faiss_bytes:
            faiss = require("faiss")
            out._faiss = faiss.deserialize_index(np.frombuffer(faiss_bytes, dtype=np.uint8))
            out._dim = int(header["dim"])
            if out._faiss.ntotal != len(row_slot) or out._faiss.d != out._dim:
                raise ValueError(f"corrupt id2 {name} index: FAISS holds {out._faiss.ntotal} vectors, header {len(row_slot)}")
        elif row_slot:
            raise ValueError(f"corrupt id2 {name} index: rows listed but no vectors stored")
        out._slots = slots
        out._row_slot = [int(s) for s in row_slot]
        out._slot_of = {k: i for i, k in enumerate(keys)}
        return out

    def dispose(self) -> None:
        self._faiss = None


def _read_block(fin: t.BinaryIO, name: str) -> bytes:
    raw = fin.read(_U64.size)
    if len(raw) != _U64.size:
        raise ValueError(f"truncated id2 {name} index")
    n = _U64.unpack(raw)[0]
    data = fin.read(n)
    if len(data) != n:
        raise ValueError(f"truncated id2 {name} index: expected {n} bytes, got {len(data)}")
    return data


class ID2PhotoIndex(_ID2Index[index.T]):
    """FAISS index of :class:`ID2PhotoSignal` hashes."""

    _SIGNAL_TYPE = ID2PhotoSignal


class ID2VideoIndex(_ID2Index[index.T]):
    """FAISS index of :class:`ID2VideoSignal` hashes (one row per keyframe, matched per video)."""

    _SIGNAL_TYPE = ID2VideoSignal


class _ID2Manifest(ThreatExchangeExtensionManifest):
    """Manifest whose ``verify`` (run by ``config extensions add``) checks the runtime dependencies."""

    @classmethod
    def verify(cls) -> None:
        for module in ("torch", "faiss", "av"):
            require(module)


TX_MANIFEST = _ID2Manifest(signal_types=(ID2PhotoSignal, ID2VideoSignal))


def index_to_bytes(idx: _ID2Index[t.Any]) -> bytes:
    """Convenience for hosts that keep indexes in a database column: :meth:`serialize` into bytes."""
    buf = io.BytesIO()
    idx.serialize(buf)
    return buf.getvalue()
