"""ThreatExchange / Hasher-Matcher-Actioner signal types for ID2 embeddings (photo and video).

Use from the ``threatexchange`` CLI::

    threatexchange config extensions add id2_plugin.adapters.threatexchange
    threatexchange hash photo original.jpg             # -> "id2 id2:2:<digest>:<payload>"
    threatexchange match photo suspected_edit.jpg      # -> "id2 0.1412 (collab) ..."

or list the classes in OpenMediaMatch's ``omm_config.py`` (OMM does not read ``TX_MANIFEST``; see
``examples/openmediamatch_config.py`` and ``docs/guides/omm-operator.md``)::

    STORAGE_IFACE_INSTANCE = DefaultOMMStore(signal_types=[PdqSignal, VideoMD5Signal, ID2PhotoSignal])

**Signals** (:mod:`id2_plugin.adapters._txsignal`): ``id2:2:<digest>:<payload>`` for photos and
``id2_video:2:<digest>:<ms>.<frame>.<payload>~...`` for the kept keyframes of a video. ``digest`` names the
embedder (encoder, input size, W, fusion weights) that made the hash; hashes of different embedders are
never compared, and a signal of another embedder (or dimension) is refused by ``validate_signal_str``.
Version-1 strings (bare float16 hex, JSON videos) are refused with a message pointing to
:meth:`~_ID2SignalBase.upgrade_legacy_signal`.

**Distance.** ``1 - cosine`` (0 = same embedding, 2 = opposite); for videos the smallest distance between
any query keyframe and any reference keyframe. A match is ``distance <= 1 - cosine_threshold``, the cosine
threshold being, in this order: :meth:`~_ID2SignalBase.configure` ``(cosine_threshold=...)``, else
``match.threshold`` of the config file given to ``configure(config=...)``, ``$ID2_CONFIG`` or
``./id2.yaml`` (relative to the worker's cwd; re-read when the file changes), else 0.5. It is read at
every match, never frozen into a stored index (:meth:`~_ID2SignalBase.threshold_source` says which).

**Index.** :class:`ID2PhotoIndex` / :class:`ID2VideoIndex` keep vectors in a FAISS inner-product index
(exact). They pickle (what ``SignalTypeIndex.serialize`` / ``deserialize`` and so OpenMediaMatch do) as one
call to :func:`_restore_index` on the adapter's own validated bytes (``faiss.serialize_index`` plus JSON
entries, :mod:`id2_plugin.adapters._jsoncodec`); nothing else is referenced by the pickle. A build keeps
the signals of the embedder in use and skips (counts in ``skipped``, logs) the others.

**Model.** Nothing is loaded at import. The embedder (:func:`id2_plugin.assembly.build_embedder` on the
config's ``embedder`` section) is built on first use, once per process, or by :func:`warm_up` (call it
from the host's start-up hook). ``configure(threads=N)`` or ``$ID2_THREADS`` caps torch / ONNX Runtime
threads.
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import logging
import os
import pathlib
import pickle
import struct
import sys
import threading
import typing as t

import numpy as np
from threatexchange.cli.exceptions import CommandError
from threatexchange.content_type.content_base import ContentType
from threatexchange.content_type.photo import PhotoContent
from threatexchange.content_type.video import VideoContent
from threatexchange.extensions.manifest import ThreatExchangeExtensionManifest
from threatexchange.signal_type import index
from threatexchange.signal_type.signal_base import BytesHasher, FileHasher, SignalComparisonResult, SignalType

from id2_plugin.assembly import cosine_threshold
from id2_plugin.config import Config, MatchConfig, default_config_path, load_config
from id2_plugin.errors import MediaError, MissingExtraError
from id2_plugin.extras import require

from . import _jsoncodec, _txsignal
from ._shared import SerialEmbedder, get_embedder, synthetic_images

__all__ = [
    "THREADS_ENV",
    "HashError",
    "ID2PhotoIndex",
    "ID2PhotoSignal",
    "ID2VideoIndex",
    "ID2VideoSignal",
    "SignalIdentityError",
    "TX_MANIFEST",
    "format_video_signal",
    "index_to_bytes",
    "parse_video_signal",
    "warm_up",
]

logger = logging.getLogger(__name__)

#: Environment variable capping the threads torch and ONNX Runtime use per process.
THREADS_ENV = "ID2_THREADS"
#: Distances are rounded so the CLI prints short, stable numbers (6 decimals is far below any threshold).
_DIST_DECIMALS = 6


class HashError(CommandError, ValueError):
    """A file or bytes could not be hashed: the ``threatexchange`` CLI prints it and exits 2."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 2)


class SignalIdentityError(ValueError):
    """A well-formed signal that cannot be used here: unversioned, or made by another embedder / dimension."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        #: ``"unversioned"`` or ``"other embedder"`` (how an index build counts what it skipped)
        self.reason = reason


class _Settings:
    """Process-wide overrides set by :meth:`_ID2SignalBase.configure` (else the id2 config is used)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.embedder: SerialEmbedder | None = None
        self.cosine_threshold: float | None = None
        self.config_path: pathlib.Path | None = None
        #: the embedder section of ``config_path``, read once (the threshold is re-read, not this)
        self.config: Config | None = None
        self.threads: int | None = None
        self.examples: dict[str, list[np.ndarray]] = {}
        #: (resolved config path, mtime_ns) -> its match.threshold, so an edited file is picked up
        self.file_threshold: tuple[tuple[str, int], float] | None = None


_settings = _Settings()


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
        if cosine_threshold is not None and not -1.0 <= cosine_threshold <= 1.0:
            raise ValueError(f"cosine_threshold={cosine_threshold} must lie in [-1, 1]")
        if threads is not None and threads < 1:
            raise ValueError(f"threads={threads} must be >= 1")
        path = pathlib.Path(config).resolve() if config is not None else None
        loaded = load_config(path) if path is not None else None  # fails now, in the host's start-up
        with _settings.lock:
            if embedder is not None:
                _settings.embedder = embedder if isinstance(embedder, SerialEmbedder) else SerialEmbedder(embedder)
            if cosine_threshold is not None:
                _settings.cosine_threshold = float(cosine_threshold)
            if loaded is not None:
                _settings.config_path, _settings.config = path, loaded
            if threads is not None:
                _settings.threads = int(threads)

    @classmethod
    def reset_configuration(cls) -> None:
        """Drop :meth:`configure` overrides and cached examples (back to the id2 config)."""
        with _settings.lock:
            _settings.embedder = None
            _settings.cosine_threshold = None
            _settings.config_path = None
            _settings.config = None
            _settings.threads = None
            _settings.examples.clear()
            _settings.file_threshold = None

    @classmethod
    def embedder(cls) -> SerialEmbedder:
        """The embedder in use (built on first call, after applying the thread cap)."""
        with _settings.lock:
            configured, cfg = _settings.embedder, _settings.config
        if configured is not None:
            return configured
        _apply_thread_cap()
        if cfg is None:
            return get_embedder()
        return get_embedder(cfg.embedder, cfg.media.limits())

    @classmethod
    def identity_digest(cls) -> str:
        """Digest of the embedder in use, as written into every signal it makes."""
        return _txsignal.identity_digest(cls.embedder().identity)

    @classmethod
    def distance_threshold(cls) -> float:
        """Largest ``1 - cosine`` distance that is a match, read now (see the module docstring)."""
        return 1.0 - _cosine_threshold()[0]

    @classmethod
    def threshold_source(cls) -> str:
        """Where :meth:`distance_threshold` comes from: ``configure()``, a config file path, or the default."""
        return _cosine_threshold()[1]

    @classmethod
    def parse(cls, signal_str: str) -> _txsignal.Parsed:
        """Decode a signal string of either format version; :class:`ValueError` if malformed."""
        raise NotImplementedError

    @classmethod
    def vectors(cls, signal_str: str) -> np.ndarray:
        """The signal as ``N x dim`` unit vectors (one row for a photo, one per keyframe for a video)."""
        return cls.parse(signal_str).vectors

    @classmethod
    def check_current(cls, parsed: _txsignal.Parsed) -> None:
        """Raise :class:`SignalIdentityError` unless ``parsed`` was made by the embedder in use."""
        _check_versioned(cls.get_name(), parsed)
        emb = cls.embedder()
        digest = _txsignal.identity_digest(emb.identity)
        if parsed.digest != digest:
            raise SignalIdentityError(
                f"{cls.get_name()} signal was made by embedder {parsed.digest} ({parsed.dim}-d); this process uses "
                f"{digest} ({emb.dim}-d, {emb.identity}): re-hash the content with this embedder",
                "other embedder",
            )
        if parsed.dim != emb.dim:
            # Same digest, other length: the digest was copied onto another embedding, or the payload was cut.
            raise SignalIdentityError(
                f"{cls.get_name()} signal names this process's embedder ({digest}) but holds {parsed.dim} values where "
                f"it makes {emb.dim}: the payload was truncated or altered; re-hash the content with this embedder",
                "other embedder",
            )

    @classmethod
    def validate_signal_str(cls, signal_str: str) -> str:
        """Accept only well-formed signals of the embedder in use (identity and dimension)."""
        s = signal_str.strip()
        cls.check_current(cls.parse(s))
        return s

    @classmethod
    def compare_hash(cls, hash1: str, hash2: str) -> SignalComparisonResult:
        a, b = cls.parse(hash1), cls.parse(hash2)
        _check_comparable(cls.get_name(), a, b)
        cos = float(np.max(a.vectors @ b.vectors.T))
        return SignalComparisonResult.from_simple_dist(_distance(cos), cls.distance_threshold())

    @classmethod
    def upgrade_legacy_signal(cls, signal_str: str) -> str:
        """A version-1 (unversioned) signal restamped with the digest of the embedder in use.

        Only call it for strings you know this embedder made (same encoder, W and fusion weights as when
        they were hashed): the old format does not record it, which is why it is refused everywhere else.
        Raises :class:`SignalIdentityError` when the dimension does not fit the embedder in use.
        """
        parsed = cls.parse(signal_str)
        if parsed.version == _txsignal.VERSION:
            cls.check_current(parsed)
            return signal_str.strip()
        emb = cls.embedder()
        if parsed.dim != emb.dim:
            raise SignalIdentityError(
                f"unversioned {cls.get_name()} signal is {parsed.dim}-d; the embedder in use makes {emb.dim}-d "
                "hashes, so another embedder made it: re-hash the content",
                "other embedder",
            )
        return cls._format(parsed, _txsignal.identity_digest(emb.identity))

    @classmethod
    def _format(cls, parsed: _txsignal.Parsed, digest: str) -> str:
        raise NotImplementedError


def _check_versioned(name: str, parsed: _txsignal.Parsed) -> None:
    if parsed.version != _txsignal.VERSION:
        raise SignalIdentityError(
            f"unversioned (format 1) {name} signal: it does not record which embedder made it, so it cannot be "
            f"compared safely. Re-hash the content, or, if this embedder made it, convert it with "
            f"upgrade_legacy_signal() (docs/guides/omm-operator.md, upgrading)",
            "unversioned",
        )


def _check_comparable(name: str, a: _txsignal.Parsed, b: _txsignal.Parsed) -> None:
    _check_versioned(name, a)
    _check_versioned(name, b)
    if a.digest != b.digest or a.dim != b.dim:
        raise SignalIdentityError(
            f"{name} hashes were made by different embedders ({a.digest}, {a.dim}-d vs {b.digest}, {b.dim}-d): "
            "their distance means nothing, so they are not compared",
            "other embedder",
        )


def _distance(cos: float) -> float:
    # Clamped: float rounding can push the cosine of a vector with itself a hair above 1.
    return round(min(2.0, max(0.0, 1.0 - cos)), _DIST_DECIMALS)


def _cosine_threshold() -> tuple[float, str]:
    """``(cosine threshold, where it came from)``: configure(), else the config file, else the default."""
    with _settings.lock:
        if _settings.cosine_threshold is not None:
            return _settings.cosine_threshold, "configure()"
        path = _settings.config_path
    if path is None:
        found = default_config_path()
        if found is None:
            return cosine_threshold(
                MatchConfig(), _ID2SignalBase.embedder()
            ), "built-in default (the shipped calibration)"
        path = found.resolve()
    return _file_threshold(path), str(path)


def _file_threshold(path: pathlib.Path) -> float:
    """``match.threshold`` of ``path``, parsed again only when its mtime changed (a stat per match)."""
    # A missing file gets a key of its own; load_config then raises a ConfigError naming it.
    key = (str(path), path.stat().st_mtime_ns if path.exists() else -1)
    with _settings.lock:
        cached = _settings.file_threshold
    if cached is None or cached[0] != key:
        value = cosine_threshold(load_config(path).match, _ID2SignalBase.embedder())
        logger.info("id2: match threshold %.4f (cosine) from %s", value, path)
        cached = (key, value)
        with _settings.lock:
            _settings.file_threshold = cached
    return cached[1]


def _apply_thread_cap() -> None:
    """Cap torch (and, through ``$ID2_THREADS``, ONNX Runtime) threads before a model is built."""
    with _settings.lock:
        threads = _settings.threads
    if threads is None:
        env = os.environ.get(THREADS_ENV)
        if not env:
            return
        if not env.isdigit() or int(env) < 1:
            raise ValueError(f"${THREADS_ENV}={env!r} must be a positive integer")
        threads = int(env)
    os.environ[THREADS_ENV] = str(threads)  # read by the SSCD session builder
    try:
        torch = require("torch")
    except MissingExtraError:  # an SSCD-only install: the environment variable is all there is to cap
        return
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _hash_error(name: str, reason: object) -> HashError:
    """``reason`` names the file (MediaError messages start with it)."""
    logger.warning("%s: cannot hash %s", name, reason)
    return HashError(f"{name}: cannot hash {reason}")


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
    def parse(cls, signal_str: str) -> _txsignal.Parsed:
        return _txsignal.parse_photo(signal_str)

    @classmethod
    def _format(cls, parsed: _txsignal.Parsed, digest: str) -> str:
        return _txsignal.format_photo(parsed.vectors[0], digest)

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
            raise _hash_error("id2", exc) from None
        return _txsignal.format_photo(vec, _txsignal.identity_digest(emb.identity))

    @staticmethod
    def get_examples() -> list[str]:
        """Embeddings of three deterministic synthetic pictures, computed once per process and embedder."""
        emb = ID2PhotoSignal.embedder()
        digest = _txsignal.identity_digest(emb.identity)
        return [_txsignal.format_photo(v, digest) for v in _example_vectors(emb)]


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
    def parse(cls, signal_str: str) -> _txsignal.Parsed:
        return _txsignal.parse_video(signal_str)

    @classmethod
    def _format(cls, parsed: _txsignal.Parsed, digest: str) -> str:
        return _txsignal.format_video([(ts, i, v) for (ts, i), v in zip(parsed.frames, parsed.vectors)], digest)

    @classmethod
    def hash_from_file(cls, file: pathlib.Path) -> str:
        """Embed the kept keyframes of a video file; :class:`HashError` if it cannot be decoded or has none."""
        from id2_plugin.video import embed_keyframes

        emb = cls.embedder()
        try:
            frames = embed_keyframes(file, emb)  # type: ignore[arg-type]
        except MediaError as exc:
            raise _hash_error("id2_video", exc) from None
        if not frames:
            raise _hash_error("id2_video", f"{file}: no decodable keyframe")
        return format_video_signal(frames, _txsignal.identity_digest(emb.identity))

    @staticmethod
    def get_examples() -> list[str]:
        """One synthetic three-keyframe "video" (the synthetic pictures at 0, 1 and 2 s)."""
        emb = ID2VideoSignal.embedder()
        frames = [(float(i), i * 25, v) for i, v in enumerate(_example_vectors(emb))]
        return [format_video_signal(frames, _txsignal.identity_digest(emb.identity))]


def _example_vectors(emb: SerialEmbedder) -> list[np.ndarray]:
    """Embeddings of three synthetic pictures, computed once per process and embedder (both signals use them)."""
    with _settings.lock:
        found = _settings.examples.get(emb.identity)
    if found is None:
        size = emb.input_size
        found = list(emb.embed_arrays(np.stack([emb.normalise(img) for img in synthetic_images(3, size)])))
        with _settings.lock:
            _settings.examples[emb.identity] = found
    return list(found)


def format_video_signal(frames: t.Sequence[tuple[float, int, np.ndarray]], digest: str | None = None) -> str:
    """``[(timestamp_s, frame_index, unit vector), ...]`` -> ``id2_video`` signal (default digest: the embedder in use)."""
    return _txsignal.format_video(frames, digest or ID2VideoSignal.identity_digest())


def parse_video_signal(signal_str: str) -> list[tuple[float, int, np.ndarray]]:
    """``id2_video`` signal (either version) -> ``[(timestamp_s, frame_index, unit vector)]``."""
    parsed = _txsignal.parse_video(signal_str)
    return [(ts, i, v) for (ts, i), v in zip(parsed.frames, parsed.vectors)]


def warm_up(app: t.Any = None) -> dict[str, t.Any]:
    """Build the embedder and run one forward pass now; call it from OMM's ``APP_HOOK`` beside OMM's own
    ``on_flask_ready`` (README, "OpenMediaMatch"), with ``dictConfig(..., disable_existing_loggers=False)``
    so that its "id2 ready" line is logged.

    The first hash otherwise pays the model load (5-20 s) inside a request, close to gunicorn's 30 s
    worker timeout. ``app`` (the Flask app OMM passes to its hook) is not used. Returns what an operator
    wants in the start-up log: identity, digest, dimension, threshold and its source, torch threads.
    """
    emb = ID2PhotoSignal.embedder()
    _example_vectors(emb)
    info = {
        "identity": emb.identity,
        "digest": _txsignal.identity_digest(emb.identity),
        "dim": emb.dim,
        "cosine_threshold": 1.0 - ID2PhotoSignal.distance_threshold(),
        "threshold_source": ID2PhotoSignal.threshold_source(),
    }
    if "torch" in sys.modules:
        info["torch_threads"] = sys.modules["torch"].get_num_threads()
    logger.info("id2 ready: %s", info)
    return info


# -- index ----------------------------------------------------------------------------------------------
_MAGIC = b"ID2TXIX\x02"
_FORMAT = "id2-threatexchange-index"
_FORMAT_VERSION = 2
_U64 = struct.Struct("<Q")


class _ID2Index(index.SignalTypeIndex[index.T]):
    """Exact FAISS inner-product index over the signal vectors, with per-signal entry lists.

    Holds the signals of one embedder (``digest``: the embedder in use when the first signal was added).
    Signals of another embedder, or unversioned ones, are skipped and counted in ``skipped`` (a changed W
    must not make the whole bank's index fail). A signal string added twice keeps one set of vectors and
    appends the entry. ``query`` returns every signal within the distance threshold, best first, each
    signal's entries in insertion order.
    """

    _SIGNAL_TYPE: type[_ID2SignalBase]

    def __init__(self, threshold: float | None = None) -> None:
        #: fixed ``1 - cosine`` threshold; None = the signal type's, read at every query
        self.fixed_threshold = None if threshold is None else float(threshold)
        #: identity digest of the embedder whose signals this index holds
        self.digest: str | None = None
        #: signals a build refused, by reason ("other embedder", "unversioned", "malformed")
        self.skipped: collections.Counter[str] = collections.Counter()
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

    @property
    def threshold(self) -> float:
        """Largest ``1 - cosine`` distance :meth:`query` returns, as of now."""
        return self._SIGNAL_TYPE.distance_threshold() if self.fixed_threshold is None else self.fixed_threshold

    @staticmethod
    def _key(signal: str) -> str:
        return hashlib.sha256(signal.encode()).hexdigest()

    def add(self, signal_str: str, entry: index.T) -> None:
        self.add_all([(signal_str, entry)])

    def add_all(self, entries: t.Iterable[tuple[str, index.T]]) -> None:
        pending: list[np.ndarray] = []
        skipped: collections.Counter[str] = collections.Counter()
        for signal_str, entry in entries:
            sig = signal_str.strip()
            key = self._key(sig)
            slot = self._slot_of.get(key)
            if slot is None:
                vecs = self._admit(sig, skipped)
                if vecs is None:
                    continue
                slot = self._new_slot(key, len(vecs))
                pending.append(vecs)
            self._slots[slot].append(entry)
        if pending:
            self._faiss.add(np.ascontiguousarray(np.concatenate(pending), dtype=np.float32))
        self._report(skipped)

    def _admit(self, sig: str, skipped: collections.Counter[str]) -> np.ndarray | None:
        """The vectors of ``sig`` if it belongs in this index, else None (counted in ``skipped``)."""
        try:
            parsed = self._SIGNAL_TYPE.parse(sig)
            if self.digest is None:
                self._SIGNAL_TYPE.check_current(parsed)
                self._start(parsed)
            else:
                self._check_held(parsed)
        except SignalIdentityError as exc:
            skipped[exc.reason] += 1
            return None
        except ValueError:
            skipped["malformed"] += 1
            return None
        return parsed.vectors

    def _start(self, parsed: _txsignal.Parsed) -> None:
        faiss = require("faiss")
        self._faiss, self._dim, self.digest = faiss.IndexFlatIP(parsed.dim), parsed.dim, parsed.digest

    def _check_held(self, parsed: _txsignal.Parsed) -> None:
        _check_versioned(self._SIGNAL_TYPE.get_name(), parsed)
        if parsed.digest != self.digest or parsed.dim != self._dim:
            raise SignalIdentityError(
                f"{self._SIGNAL_TYPE.get_name()} index holds signals of embedder {self.digest} ({self._dim}-d); "
                f"got one of {parsed.digest} ({parsed.dim}-d): rebuild the index after changing the embedder or W",
                "other embedder",
            )

    def _new_slot(self, key: str, rows: int) -> int:
        slot = len(self._slots)
        self._slot_of[key] = slot
        self._slots.append([])
        self._row_slot.extend([slot] * rows)
        return slot

    def _report(self, skipped: collections.Counter[str]) -> None:
        if skipped:
            self.skipped.update(skipped)
            logger.warning(
                "%s index (embedder %s): skipped %s; re-hash that content with the embedder in use",
                self._SIGNAL_TYPE.get_name(),
                self.digest,
                ", ".join(f"{n} {r}" for r, n in sorted(skipped.items())),
            )

    def query(self, query: str) -> list[index.IndexMatch[index.T]]:
        parsed = self._SIGNAL_TYPE.parse(query)
        if self._faiss is None or not self._slots:
            return []
        self._check_held(parsed)
        threshold = self.threshold
        # IndexFlatIP.range_search keeps scores strictly above the radius; the tiny margin makes the
        # threshold inclusive like compare_hash, and the exact test below decides.
        lims, scores, rows = self._faiss.range_search(
            np.ascontiguousarray(parsed.vectors, dtype=np.float32), 1.0 - threshold - 1e-6
        )
        best: dict[int, float] = {}
        for score, row in zip(scores[: lims[-1]], rows[: lims[-1]]):
            slot = self._row_slot[int(row)]
            best[slot] = max(float(score), best.get(slot, -np.inf))
        ranked = sorted((_distance(cos), slot) for slot, cos in best.items())
        out: list[index.IndexMatch[index.T]] = []
        for dist, slot in ranked:
            if dist <= threshold:
                info = index.SignalSimilarityInfoWithSingleDistance[float](dist)
                out.extend(index.IndexMatch(info, entry) for entry in self._slots[slot])
        return out

    # -- serialisation: a pickle that only calls _restore_index on the adapter's own bytes -------------
    def __reduce__(self) -> tuple[t.Any, tuple[bytes]]:
        return _restore_index, (self._to_bytes(),)

    @classmethod
    def deserialize(cls, fin: t.BinaryIO) -> t.Any:
        """Load what :meth:`serialize` wrote, refusing any pickle that references anything but this adapter."""
        data = fin.read()
        if data.startswith(_MAGIC[:-1]):  # the bare bytes (format 1 was written that way)
            out = _restore_index(data)
        else:
            try:
                out = _IndexUnpickler(io.BytesIO(data)).load()
            except (pickle.UnpicklingError, EOFError) as exc:
                raise ValueError(f"not an id2 {cls._SIGNAL_TYPE.get_name()} index: {exc}") from None
        if not isinstance(out, cls):
            raise ValueError(f"index holds {type(out).__name__}, not {cls.__name__}")
        return out

    def _to_bytes(self) -> bytes:
        """``magic | u64 len | JSON header+entries | u64 len | faiss.serialize_index bytes``."""
        header = {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "signal_type": self._SIGNAL_TYPE.get_name(),
            "digest": self.digest,
            "dim": self._dim,
            "fixed_threshold": self.fixed_threshold,
            "skipped": dict(self.skipped),
            "row_slot": self._row_slot,
            "keys": list(self._slot_of),
            "entries": _jsoncodec.encode(self._slots),
        }
        blob = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
        faiss_bytes = b"" if self._faiss is None else require("faiss").serialize_index(self._faiss).tobytes()
        return b"".join([_MAGIC, _U64.pack(len(blob)), blob, _U64.pack(len(faiss_bytes)), faiss_bytes])

    @classmethod
    def _from_bytes(cls, header: dict[str, t.Any], faiss_bytes: bytes) -> _ID2Index[t.Any]:
        name = cls._SIGNAL_TYPE.get_name()
        out = cls(header.get("fixed_threshold"))
        slots = _jsoncodec.decode(header["entries"])
        keys, row_slot = header["keys"], header["row_slot"]
        if not (isinstance(slots, list) and len(keys) == len(slots) and all(0 <= s < len(slots) for s in row_slot)):
            raise ValueError(f"corrupt id2 {name} index: entries, keys and rows disagree")
        if faiss_bytes:
            faiss = require("faiss")
            out._faiss = faiss.deserialize_index(np.frombuffer(faiss_bytes, dtype=np.uint8))
            out._dim, out.digest = int(header["dim"]), str(header["digest"])
            if out._faiss.ntotal != len(row_slot) or out._faiss.d != out._dim:
                raise ValueError(
                    f"corrupt id2 {name} index: FAISS holds {out._faiss.ntotal} vectors, header {len(row_slot)}"
                )
        elif row_slot:
            raise ValueError(f"corrupt id2 {name} index: rows listed but no vectors stored")
        out._slots = slots
        out._row_slot = [int(s) for s in row_slot]
        out._slot_of = {k: i for i, k in enumerate(keys)}
        out.skipped.update({str(k): int(v) for k, v in header.get("skipped", {}).items()})
        return out

    def dispose(self) -> None:
        self._faiss = None


class _IndexUnpickler(pickle.Unpickler):
    """Resolves exactly one global, :func:`_restore_index`; any other reference is refused."""

    def find_class(self, module: str, name: str) -> t.Any:
        if (module, name) == (__name__, "_restore_index"):
            return _restore_index
        raise pickle.UnpicklingError(f"refusing {module}.{name}: an id2 index pickle only calls _restore_index")


def _restore_index(blob: bytes) -> _ID2Index[t.Any]:
    """Rebuild an index from :meth:`_ID2Index._to_bytes` output (what the index pickle calls)."""
    fin = io.BytesIO(blob)
    magic = fin.read(len(_MAGIC))
    if magic[:-1] != _MAGIC[:-1]:
        raise ValueError("not an id2 index (bad magic)")
    if magic != _MAGIC:
        raise ValueError("id2 index in the unversioned format 1 (its signals do not name their embedder): rebuild it")
    header = json.loads(_read_block(fin))
    if header.get("format") != _FORMAT or header.get("version") != _FORMAT_VERSION:
        raise ValueError(f"unsupported id2 index format {header.get('format')!r} v{header.get('version')}")
    classes = {c._SIGNAL_TYPE.get_name(): c for c in (ID2PhotoIndex, ID2VideoIndex)}
    cls = classes.get(header.get("signal_type"))  # type: ignore[arg-type]
    if cls is None:
        raise ValueError(f"id2 index for unknown signal type {header.get('signal_type')!r}")
    return cls._from_bytes(header, _read_block(fin))


def _read_block(fin: t.BinaryIO) -> bytes:
    raw = fin.read(_U64.size)
    if len(raw) != _U64.size:
        raise ValueError("truncated id2 index")
    n = _U64.unpack(raw)[0]
    data = fin.read(n)
    if len(data) != n:
        raise ValueError(f"truncated id2 index: expected {n} bytes, got {len(data)}")
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
