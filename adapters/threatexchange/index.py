"""The id2 ``SignalTypeIndex``: an exact FAISS inner-product index and its own on-disk format.

:class:`ID2PhotoIndex` / :class:`ID2VideoIndex` keep vectors in a FAISS inner-product index (exact). They
pickle (what ``SignalTypeIndex.serialize`` / ``deserialize`` and so OpenMediaMatch do) as one call to
:func:`_restore_index` on the adapter's own validated bytes (``faiss.serialize_index`` plus JSON entries,
:mod:`~id2_plugin.adapters.threatexchange.entry_codec`); nothing else is referenced by the pickle. A build
keeps the signals of the embedder in use and skips (counts in ``skipped``, logs) the others.

The index knows its signal type by name and parser only (the signal types name their index class, as
ThreatExchange's own do), so it never imports :mod:`~id2_plugin.adapters.threatexchange.signal`.
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import logging
import pickle
import struct
import typing as t

import numpy as np
from threatexchange.signal_type import index

from id2_plugin.extras import require

from .compare import SignalIdentityError, check_embedder_in_use, check_versioned, distance
from .entry_codec import decode as decode_entries
from .entry_codec import encode as encode_entries
from .settings import distance_threshold_in_use
from .signal_format import PHOTO, VIDEO, Parsed, parse_photo, parse_video

__all__ = ["ID2PhotoIndex", "ID2VideoIndex", "index_to_bytes"]

logger = logging.getLogger(__name__)

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

    #: the signal type's name (written into the stored index) and its parser
    _NAME: str
    _parse: t.Callable[[str], Parsed]

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
        return distance_threshold_in_use() if self.fixed_threshold is None else self.fixed_threshold

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
            parsed = self._parse(sig)
            if self.digest is None:
                check_embedder_in_use(self._NAME, parsed)
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

    def _start(self, parsed: Parsed) -> None:
        faiss = require("faiss")
        self._faiss, self._dim, self.digest = faiss.IndexFlatIP(parsed.dim), parsed.dim, parsed.digest

    def _check_held(self, parsed: Parsed) -> None:
        check_versioned(self._NAME, parsed)
        if parsed.digest != self.digest or parsed.dim != self._dim:
            raise SignalIdentityError(
                f"{self._NAME} index holds signals of embedder {self.digest} ({self._dim}-d); "
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
                self._NAME,
                self.digest,
                ", ".join(f"{n} {r}" for r, n in sorted(skipped.items())),
            )

    def query(self, query: str) -> list[index.IndexMatch[index.T]]:
        parsed = self._parse(query)
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
        ranked = sorted((distance(cos), slot) for slot, cos in best.items())
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
                raise ValueError(f"not an id2 {cls._NAME} index: {exc}") from None
        if not isinstance(out, cls):
            raise ValueError(f"index holds {type(out).__name__}, not {cls.__name__}")
        return out

    def _to_bytes(self) -> bytes:
        """``magic | u64 len | JSON header+entries | u64 len | faiss.serialize_index bytes``."""
        header = {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "signal_type": self._NAME,
            "digest": self.digest,
            "dim": self._dim,
            "fixed_threshold": self.fixed_threshold,
            "skipped": dict(self.skipped),
            "row_slot": self._row_slot,
            "keys": list(self._slot_of),
            "entries": encode_entries(self._slots),
        }
        blob = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
        faiss_bytes = b"" if self._faiss is None else require("faiss").serialize_index(self._faiss).tobytes()
        return b"".join([_MAGIC, _U64.pack(len(blob)), blob, _U64.pack(len(faiss_bytes)), faiss_bytes])

    @classmethod
    def _from_bytes(cls, header: dict[str, t.Any], faiss_bytes: bytes) -> _ID2Index[t.Any]:
        name = cls._NAME
        out = cls(header.get("fixed_threshold"))
        slots = decode_entries(header["entries"])
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
    classes = {c._NAME: c for c in (ID2PhotoIndex, ID2VideoIndex)}
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
    """FAISS index of :class:`~id2_plugin.adapters.threatexchange.signal.ID2PhotoSignal` hashes."""

    _NAME = PHOTO
    _parse = staticmethod(parse_photo)


class ID2VideoIndex(_ID2Index[index.T]):
    """FAISS index of :class:`~id2_plugin.adapters.threatexchange.signal.ID2VideoSignal` hashes (one row per
    keyframe, matched per video)."""

    _NAME = VIDEO
    _parse = staticmethod(parse_video)


def index_to_bytes(idx: _ID2Index[t.Any]) -> bytes:
    """Convenience for hosts that keep indexes in a database column: :meth:`serialize` into bytes."""
    buf = io.BytesIO()
    idx.serialize(buf)
    return buf.getvalue()
