"""Built-in reference-store backends: FAISS (a folder) and Qdrant (a server, a local path or memory)."""

from __future__ import annotations

from typing import Any

from ..hookspecs import hookimpl
from ..specs import StoreSpec
from ..stores.base import ReferenceStore
from ..stores.faiss_store import FaissStore
from ..stores.qdrant_store import QdrantStore


def _faiss(spec: StoreSpec) -> ReferenceStore:
    # A FAISS store is one folder: no namespace inside it (spec.collection) and no credentials (spec.api_key).
    return FaissStore(
        spec.location,
        embedder_identity=spec.embedder_identity,
        dim=spec.dim,
        index=spec.index,
        index_options=spec.index_options,
        create=spec.create,
    )


def _qdrant(spec: StoreSpec) -> ReferenceStore:
    return QdrantStore(
        spec.location,
        embedder_identity=spec.embedder_identity,
        dim=spec.dim,
        index=spec.index,
        index_options=spec.index_options,
        create=spec.create,
        collection=spec.collection,
        api_key=spec.api_key,
    )


@hookimpl
def id2_register_stores(register: Any) -> None:
    register("faiss", _faiss)
    register("qdrant", _qdrant)
