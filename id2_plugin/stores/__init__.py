"""Reference stores: the interface and the built-in FAISS backend."""

from .base import ReferenceStore

__all__ = ["ReferenceStore"]
