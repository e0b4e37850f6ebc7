"""Reference stores: the contract, its base class, bulk insertion and the built-in backends."""

from ._bulk import BulkAddResult, bulk_add
from .base import ReferenceStore, StoreBackend
from .qdrant_store import QdrantStore

__all__ = ["BulkAddResult", "QdrantStore", "ReferenceStore", "StoreBackend", "bulk_add"]
