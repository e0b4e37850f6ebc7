"""Built-in reference-store backends."""

from __future__ import annotations

from typing import Any

from ..hookspecs import hookimpl


def _faiss(*, collection: str, api_key: str | None, **kwargs: Any) -> Any:
    from ..stores.faiss_store import FaissStore

    # A FAISS store is one folder: no namespace inside it and no credentials.
    del collection, api_key
    return FaissStore(**kwargs)


def _qdrant(**kwargs: Any) -> Any:
    from ..stores.qdrant_store import QdrantStore

    return QdrantStore(**kwargs)


@hookimpl
def id2_register_stores(register: Any) -> None:
    register("faiss", _faiss)
    register("qdrant", _qdrant)
