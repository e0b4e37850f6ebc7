"""Built-in reference-store backends."""

from __future__ import annotations

from typing import Any

import pluggy

hookimpl = pluggy.HookimplMarker("id2_plugin")


def _faiss(**kwargs: Any) -> Any:
    from ..stores.faiss_store import FaissStore

    kwargs.pop("collection", None)
    kwargs.pop("api_key", None)
    return FaissStore(**kwargs)


def _qdrant(**kwargs: Any) -> Any:
    from ..stores.qdrant_store import QdrantStore

    return QdrantStore(**kwargs)


@hookimpl
def id2_register_stores(register: Any) -> None:
    register("faiss", _faiss)
    register("qdrant", _qdrant)
