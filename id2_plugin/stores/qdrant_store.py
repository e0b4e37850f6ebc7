"""Qdrant reference store: the same interface as the FAISS store, on a Qdrant collection.

One :class:`QdrantStore` maps to one Qdrant collection, reached through ``qdrant-client`` in any of its
three modes: a server or cluster (``location="http://qdrant.internal:6333"``), an embedded on-disk store
(``location`` = a local folder, no server needed) or a throw-away in-memory store (``":memory:"``).

Design
------
* **Point id = UUIDv5 of the content sha256** (:func:`point_id`). Adding the same bytes twice maps to the
  same point, so re-adding is a no-op and a bulk add that is interrupted and restarted never creates
  duplicates, even when two writers race (the second upsert rewrites an identical point). The point id
  string is the ``reference_id`` reported in matches.
* **Payload** per point: ``sha256``, ``uri``, ``added_at`` (ISO-8601 UTC), ``labels`` (list of strings).
* **Store metadata lives in the collection's own metadata** (Qdrant collection-level ``metadata``, set at
  creation; needs Qdrant server >= 1.16 or local mode): ``id2_schema``, ``embedder`` (the embedder
  identity, encoder + W), ``dim``, ``index``, ``distance``, ``created_at``. Keeping it on the collection
  (rather than a reserved point or a side collection) means it can never leak into search results, is
  created and deleted atomically with the vectors, and is visible in the Qdrant UI. A collection without
  ``id2_schema`` metadata was not made by this package and is refused rather than written into.
* **Scores**: vectors are L2-normalised, so the ``cosine`` (default) and ``dot`` distances both return the
  cosine similarity, the same scale as the FAISS store; thresholds carry over unchanged.
* **Index types** (``store.index``): ``flat`` = exact search (brute force, like FAISS ``flat``); ``hnsw``
  = Qdrant's HNSW graph (approximate, built server-side once a segment passes Qdrant's indexing
  threshold); ``hnsw_int8`` = HNSW over int8 scalar-quantised vectors with full-precision rescoring (4x
  less RAM). The index type is recorded at creation; reopening uses the recorded one.

``index_options`` (all optional): ``distance`` (cosine|dot), ``m``, ``ef_construct``, ``hnsw_ef``,
``on_disk`` (keep vectors on disk), ``shard_number``, ``replication_factor``, ``prefer_grpc``,
``timeout`` (seconds), ``upsert_batch`` (points per upsert request, default 256).
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .._lazy import require
from ..errors import ConfigError, IncompatibleStoreError, StoreError
from ..types import AddResult, Match, ReferenceRecord, StoreInfo
from .base import ReferenceStore

#: Namespace of the UUIDv5 point ids. Never change it: existing collections would stop deduplicating.
ID_NAMESPACE = uuid.UUID("6f0e5a4c-2b1d-5e8f-9a3c-1d2e3f405162")
#: Version of the metadata layout written into the collection.
SCHEMA_VERSION = 1
INDEX_TYPES = ("flat", "hnsw", "hnsw_int8")
DISTANCES = ("cosine", "dot")
_OPTION_KEYS = frozenset(
    {
        "distance",
        "m",
        "ef_construct",
        "hnsw_ef",
        "on_disk",
        "shard_number",
        "replication_factor",
        "prefer_grpc",
        "timeout",
        "upsert_batch",
    }
)
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# Request sizes: ids per retrieve call, and a byte budget per upsert so a batch of raw 32k-dim latents does
# not turn into one huge JSON body.
_RETRIEVE_CHUNK = 1024
_UPSERT_MAX_BYTES = 16 << 20


def point_id(sha256: str) -> str:
    """The Qdrant point id (a UUID string) of the content with this sha256."""
    return str(uuid.uuid5(ID_NAMESPACE, sha256.lower()))


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class QdrantStore(ReferenceStore):
    """A reference store in a Qdrant collection (server, local folder or in-memory).

    Parameters mirror :func:`id2_plugin.assembly.open_store`: ``location`` is an ``http(s)://`` URL, a
    local folder or ``":memory:"``; ``embedder_identity`` and ``dim`` are required to create the
    collection and, when given on open, are checked against the recorded ones; ``index`` and
    ``index_options`` only matter at creation (see the module docstring); ``create`` allows creating a
    missing collection; ``collection`` names it; ``api_key`` authenticates against a server.
    """

    backend = "qdrant"

    def __init__(
        self,
        location: str | os.PathLike,
        embedder_identity: str | None = None,
        dim: int | None = None,
        index: str = "flat",
        index_options: dict[str, Any] | None = None,
        create: bool = False,
        collection: str = "id2",
        api_key: str | None = None,
    ) -> None:
        qc = require("qdrant_client")
        self._models = require("qdrant_client.models")
        options = dict(index_options or {})
        unknown = set(options) - _OPTION_KEYS
        if unknown:
            raise ConfigError(
                f"store.index_options: unknown key(s) {sorted(unknown)} for the qdrant backend; "
                f"valid keys: {', '.join(sorted(_OPTION_KEYS))}"
            )
        if not collection:
            raise ConfigError("store.collection must be a non-empty collection name for the qdrant backend")
        self._collection = collection
        self._options = options
        self._upsert_batch = int(options.get("upsert_batch", 256))
        if self._upsert_batch < 1:
            raise ConfigError("store.index_options.upsert_batch must be >= 1")
        loc = os.fspath(location)
        self._remote = loc.startswith(("http://", "https://"))
        # The location shown in info() and errors: never include the api key.
        self._location = loc if self._remote or loc == ":memory:" else str(Path(loc).resolve())
        self._client = self._connect(qc, loc, create, api_key)
        try:
            self._open_or_create(create, embedder_identity, dim, index)
        except BaseException:
            self._client.close()
            raise

    # -- opening -------------------------------------------------------------------------------------
    def _connect(self, qc: Any, loc: str, create: bool, api_key: str | None) -> Any:
        timeout = self._options.get("timeout")
        try:
            if self._remote:
                return qc.QdrantClient(
                    url=loc,
                    api_key=api_key,
                    prefer_grpc=bool(self._options.get("prefer_grpc", False)),
                    timeout=int(timeout) if timeout is not None else None,
                )
            if loc == ":memory:":
                return qc.QdrantClient(location=":memory:")
            path = Path(loc)
            if path.exists() and not path.is_dir():
                raise StoreError(f"qdrant store location {path} exists and is not a folder")
            if not path.exists() and not create:
                raise StoreError(f"no qdrant store at {path}; create one with `id2-plugin index add`")
            path.mkdir(parents=True, exist_ok=True)
            return qc.QdrantClient(path=str(path))
        except StoreError:
            raise
        except RuntimeError as exc:
            # qdrant-client's local mode locks the folder: a second process gets a RuntimeError.
            raise StoreError(f"cannot open qdrant store {self._location}: {exc}") from None

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a client call, turning transport / server errors into :class:`StoreError`."""
        try:
            return fn(*args, **kwargs)
        except (StoreError, ConfigError):
            raise
        except Exception as exc:  # the client raises httpx, grpc and its own exception types
            raise StoreError(
                f"qdrant {what} failed on collection {self._collection!r} at {self._location}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    def _open_or_create(self, create: bool, embedder_identity: str | None, dim: int | None, index: str) -> None:
        exists = self._call("collection_exists", self._client.collection_exists, self._collection)
        if not exists:
            if not create:
                raise StoreError(
                    f"qdrant collection {self._collection!r} does not exist at {self._location}; "
                    "create it with `id2-plugin index add`"
                )
            if embedder_identity is None or dim is None:
                raise StoreError("creating a qdrant collection needs the embedder identity and dimension")
            self._create(embedder_identity, int(dim), index)
        info = self._call("get_collection", self._client.get_collection, self._collection)
        meta = dict(info.config.metadata or {})
        if meta.get("id2_schema") is None:
            raise StoreError(
                f"qdrant collection {self._collection!r} at {self._location} has no id2-plugin metadata: it was not "
                "created by id2-plugin (or the server is older than 1.16 and dropped collection metadata); "
                "use another store.collection"
            )
        if int(meta["id2_schema"]) > SCHEMA_VERSION:
            raise StoreError(
                f"qdrant collection {self._collection!r} uses id2 schema {meta['id2_schema']}, newer than this "
                f"version of id2-plugin understands ({SCHEMA_VERSION}); upgrade id2-plugin"
            )
        self._meta = meta
        self._embedder = str(meta["embedder"])
        self._dim = int(meta["dim"])
        self._index = str(meta.get("index", "flat"))
        vectors = info.config.params.vectors
        size = getattr(vectors, "size", None)
        if size is not None and int(size) != self._dim:
            raise StoreError(f"qdrant collection {self._collection!r}: vector size {size} != recorded dim {self._dim}")
        if embedder_identity is not None:
            self.check_compatible(embedder_identity)
        if dim is not None and int(dim) != self._dim:
            raise IncompatibleStoreError(
                f"qdrant collection {self._collection!r} holds {self._dim}-dim vectors, the embedder makes {dim}-dim"
            )

    def _create(self, embedder_identity: str, dim: int, index: str) -> None:
        m = self._models
        if index not in INDEX_TYPES:
            raise ConfigError(f"store.index={index!r} is not supported by the qdrant backend; use one of {INDEX_TYPES}")
        distance = str(self._options.get("distance", "cosine")).lower()
        if distance not in DISTANCES:
            raise ConfigError(f"store.index_options.distance={distance!r}: expected one of {DISTANCES}")
        if dim < 1:
            raise ConfigError(f"embedding dimension must be >= 1, got {dim}")
        hnsw = None
        if "m" in self._options or "ef_construct" in self._options:
            hnsw = m.HnswConfigDiff(m=self._options.get("m"), ef_construct=self._options.get("ef_construct"))
        quant = None
        if index == "hnsw_int8":
            quant = m.ScalarQuantization(scalar=m.ScalarQuantizationConfig(type=m.ScalarType.INT8, always_ram=True))
        meta = {
            "id2_schema": SCHEMA_VERSION,
            "embedder": embedder_identity,
            "dim": dim,
            "index": index,
            "distance": distance,
            "created_at": _now(),
        }
        self._call(
            "create_collection",
            self._client.create_collection,
            collection_name=self._collection,
            vectors_config=m.VectorParams(
                size=dim,
                distance=m.Distance.COSINE if distance == "cosine" else m.Distance.DOT,
                on_disk=self._options.get("on_disk"),
            ),
            hnsw_config=hnsw,
            quantization_config=quant,
            shard_number=self._options.get("shard_number"),
            replication_factor=self._options.get("replication_factor"),
            metadata=meta,
        )

    # -- properties ----------------------------------------------------------------------------------
    @property
    def embedder_identity(self) -> str:
        return self._embedder

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def collection(self) -> str:
        return self._collection

    # -- helpers -------------------------------------------------------------------------------------
    def _check_vectors(self, vectors: np.ndarray) -> np.ndarray:
        arr = np.asarray(vectors, dtype=np.float32)
        if arr.ndim == 1:
            arr = arr[None]
        if arr.ndim != 2 or arr.shape[1] != self._dim:
            raise ValueError(f"expected N x {self._dim} vectors, got shape {np.shape(vectors)}")
        if not np.isfinite(arr).all():
            raise ValueError("vectors contain NaN or infinity")
        return arr

    def _existing_ids(self, ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(ids), _RETRIEVE_CHUNK):
            chunk = list(ids[start : start + _RETRIEVE_CHUNK])
            if not chunk:
                continue
            recs = self._call(
                "retrieve", self._client.retrieve, self._collection, ids=chunk, with_payload=False, with_vectors=False
            )
            found.update(str(r.id) for r in recs)
        return found

    def fetch_vectors(self, reference_ids: Sequence[str]) -> np.ndarray | None:
        """Stored vectors of ``reference_ids`` (retrieved with their points), in the order asked."""
        ids = [str(uuid.UUID(r)) for r in reference_ids]
        got: dict[str, np.ndarray] = {}
        for start in range(0, len(ids), _RETRIEVE_CHUNK):
            chunk = ids[start : start + _RETRIEVE_CHUNK]
            recs = self._call(
                "retrieve", self._client.retrieve, self._collection, ids=chunk, with_payload=False, with_vectors=True
            )
            got.update((str(r.id), np.asarray(r.vector, np.float32)) for r in recs)
        missing = [i for i in ids if i not in got]
        if missing:
            raise StoreError(f"unknown reference id(s) {missing[:5]}")
        return np.stack([got[i] for i in ids]) if ids else np.zeros((0, self._dim), np.float32)

    def _search_params(self) -> Any:
        m = self._models
        if self._index == "flat":
            return m.SearchParams(exact=True)
        quant = m.QuantizationSearchParams(rescore=True) if self._index == "hnsw_int8" else None
        return m.SearchParams(hnsw_ef=self._options.get("hnsw_ef"), quantization=quant)

    # -- interface -----------------------------------------------------------------------------------
    def add(self, vectors: np.ndarray, records: Sequence[ReferenceRecord]) -> AddResult:
        """Upsert new references; sha256s already stored (or repeated within the call) are duplicates.

        Points are written with ``wait=True`` in requests of at most ``upsert_batch`` points. Each request
        is applied atomically by Qdrant; because ids derive from content, re-running an interrupted add
        completes it without duplicating anything.
        """
        arr = self._check_vectors(vectors)
        if len(arr) != len(records):
            raise ValueError(f"{len(arr)} vectors but {len(records)} records")
        for r in records:
            if not _SHA256_RE.match(r.sha256 or ""):
                raise ValueError(f"record for {r.uri!r} has no valid sha256 (64 lowercase hex digits): {r.sha256!r}")
        ids = [point_id(r.sha256) for r in records]
        existing = self._existing_ids(list(dict.fromkeys(ids)))
        seen: set[str] = set()
        keep: list[int] = []
        duplicates: list[str] = []
        for i, (pid, rec) in enumerate(zip(ids, records)):
            if pid in existing or pid in seen:
                duplicates.append(rec.sha256)
                continue
            seen.add(pid)
            keep.append(i)
        now = _now()
        per_request = max(1, min(self._upsert_batch, _UPSERT_MAX_BYTES // (4 * self._dim)))
        m = self._models
        for start in range(0, len(keep), per_request):
            idx = keep[start : start + per_request]
            payloads = [
                {
                    "sha256": records[i].sha256,
                    "uri": records[i].uri,
                    "added_at": records[i].added_at or now,
                    "labels": list(records[i].labels),
                }
                for i in idx
            ]
            self._call(
                "upsert",
                self._client.upsert,
                collection_name=self._collection,
                points=m.Batch(ids=[ids[i] for i in idx], vectors=arr[idx].tolist(), payloads=payloads),
                wait=True,
            )
        return AddResult(added=tuple(ids[i] for i in keep), duplicates=tuple(duplicates))

    def _resolve(self, key: str) -> str | None:
        k = key.strip().lower()
        if _SHA256_RE.match(k):
            return point_id(k)
        if _is_uuid(k):
            return str(uuid.UUID(k))
        return None

    def remove(self, keys: Sequence[str]) -> int:
        """Remove references by reference id (the point UUID) or content sha256; unknown keys count 0."""
        ids = list(dict.fromkeys(pid for pid in (self._resolve(k) for k in keys) if pid is not None))
        found = self._existing_ids(ids)
        present = [pid for pid in ids if pid in found]
        if present:
            self._call(
                "delete",
                self._client.delete,
                collection_name=self._collection,
                points_selector=self._models.PointIdsList(points=present),
                wait=True,
            )
        return len(present)

    def query(self, vectors: np.ndarray, k: int = 5, threshold: float | None = None) -> list[list[Match]]:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        arr = self._check_vectors(vectors)
        if len(arr) == 0:
            return []
        m = self._models
        # Local mode always searches exactly and warns about any search params, so send them to servers only.
        params = self._search_params() if self._remote else None
        # Qdrant compares scores in float32; ask for slightly more and apply ">= threshold" here so the
        # boundary behaves exactly as in the FAISS store.
        qthr = None if threshold is None else float(threshold) - 1e-6
        requests = [
            m.QueryRequest(query=v.tolist(), limit=k, score_threshold=qthr, with_payload=True, params=params)
            for v in arr
        ]
        responses = self._call(
            "query", self._client.query_batch_points, collection_name=self._collection, requests=requests
        )
        out: list[list[Match]] = []
        for resp in responses:
            matches: list[Match] = []
            for p in resp.points:
                # Local mode scores in float64: 1 + 2e-8 for an exact duplicate; cosine is bounded.
                score = min(1.0, max(-1.0, float(p.score)))
                if threshold is not None and score < threshold:
                    continue
                payload = p.payload or {}
                matches.append(
                    Match(
                        reference_id=str(p.id),
                        uri=str(payload.get("uri", "")),
                        score=score,
                        rank=len(matches) + 1,
                        sha256=str(payload.get("sha256", "")),
                        labels=tuple(payload.get("labels") or ()),
                    )
                )
            out.append(matches)
        return out

    def contains(self, sha256s: Sequence[str]) -> list[bool]:
        ids = [point_id(s.lower()) if _SHA256_RE.match((s or "").lower()) else None for s in sha256s]
        found = self._existing_ids(list(dict.fromkeys(i for i in ids if i is not None)))
        return [i is not None and i in found for i in ids]

    def get(self, key: str) -> ReferenceRecord | None:
        """The stored record for a reference id or sha256, or None."""
        pid = self._resolve(key)
        if pid is None:
            return None
        recs = self._call("retrieve", self._client.retrieve, self._collection, ids=[pid], with_payload=True)
        if not recs:
            return None
        p = recs[0].payload or {}
        return ReferenceRecord(
            sha256=str(p.get("sha256", "")),
            uri=str(p.get("uri", "")),
            labels=tuple(p.get("labels") or ()),
            reference_id=str(recs[0].id),
            added_at=str(p.get("added_at", "")),
        )

    def __len__(self) -> int:
        return int(self._call("count", self._client.count, self._collection, exact=True).count)

    def info(self) -> StoreInfo:
        ci = self._call("get_collection", self._client.get_collection, self._collection)
        status = getattr(ci.status, "value", ci.status)
        return StoreInfo(
            backend=self.backend,
            location=self._location,
            count=len(self),
            dim=self._dim,
            embedder=self._embedder,
            index_type=self._index,
            extra={
                "collection": self._collection,
                "mode": "server" if self._remote else ("memory" if self._location == ":memory:" else "local"),
                "distance": self._meta.get("distance", "cosine"),
                "created_at": self._meta.get("created_at"),
                "status": str(status),
                "indexed_vectors_count": ci.indexed_vectors_count,
                "segments_count": ci.segments_count,
            },
        )

    def close(self) -> None:
        client = getattr(self, "_client", None)
        if client is not None:
            client.close()
            self._client = None
