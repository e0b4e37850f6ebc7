"""Reference stores: the interface and the built-in FAISS backend."""

from ._bulk import BulkAddResult, bulk_add
from .base import ReferenceStore
from .qdrant_store import QdrantStore

__all__ = ["BulkAddResult", "QdrantStore", "ReferenceStore", "bulk_add"]
