"""The reference-store contract (:class:`StoreBackend`) and the base class that implements its boilerplate
(:class:`ReferenceStore`); FAISS is built in, Qdrant optional."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from ..errors import IncompatibleStoreError
from ..types import AddResult, Match, ReferenceRecord, StoreInfo


def embedder_kind(identity: str) -> str:
    """A short reading of an embedder identity: ``fused (id2 0.40 + sscd 0.60)``, ``sscd``, ``id2``, ``vae_raw``."""
    if identity.startswith("fused[") and identity.endswith("]"):
        parts = [p.split(":", 1)[0].split("=") for p in identity[6:-1].split(";")]
        return "fused (" + " + ".join(f"{name} {float(w):.2f}" for name, w in parts) + ")"
    if identity.startswith("sscd@"):
        return "sscd"
    return "vae_raw" if identity.endswith("+raw") else "id2"


def _precision(identity: str) -> str:
    return "int8" if "/int8:" in identity else "fp32"


def _precision_hint(stored: str, configured: str) -> str:
    """Names the precision when that is what differs: int8 vectors are close to fp32, not equal."""
    a, b = _precision(stored), _precision(configured)
    return f", embedder.precision={a}: this store was built at {a}, the embedder runs at {b}" if a != b else ""


@runtime_checkable
class StoreBackend(Protocol):
    """What the package asks of a reference store: the contract every backend meets.

    A persistent collection of L2-normalised reference embeddings with metadata, built by one embedder
    (encoder + W) whose identity it records; scores are inner products = cosine similarities. These are
    the members the package calls a store through (a backend may offer more, e.g. FAISS maintenance).
    Derive from :class:`ReferenceStore` to get :meth:`check_compatible`, :meth:`fetch_vectors`,
    :meth:`close` and the context manager for free.
    """

    @property
    @abstractmethod
    def embedder_identity(self) -> str:
        """Identity string of the embedder that built this store."""

    @property
    @abstractmethod
    def dim(self) -> int:
        """Vector dimension."""

    @abstractmethod
    def add(self, vectors: np.ndarray, records: Sequence[ReferenceRecord]) -> AddResult:
        """Add ``vectors`` (N x dim, float32, L2-normalised) with their ``records``; skip known sha256s.

        The add is committed atomically before returning: a crash never leaves a partial commit.
        """

    @abstractmethod
    def remove(self, keys: Sequence[str]) -> int:
        """Remove references by reference id or sha256; returns how many were removed."""

    @abstractmethod
    def query(self, vectors: np.ndarray, k: int = 5, threshold: float | None = None) -> list[list[Match]]:
        """Return, per query vector, up to ``k`` matches ranked by score (only those >= ``threshold`` if given)."""

    @abstractmethod
    def contains(self, sha256s: Sequence[str]) -> list[bool]:
        """Whether each content hash is already in the store (lets callers skip embedding duplicates)."""

    @abstractmethod
    def info(self) -> StoreInfo:
        """Count, dimension, embedder identity, index type and backend-specific details."""

    @abstractmethod
    def fetch_vectors(self, reference_ids: Sequence[str]) -> np.ndarray | None:
        """The stored vectors of ``reference_ids`` (``N x dim`` float32), or None if the backend cannot say.

        Used to report each signal's own cosine for a match of a fused embedding (its slices); a backend
        that returns None simply reports matches without that evidence.
        """

    @abstractmethod
    def check_compatible(self, embedder_identity: str) -> None:
        """Raise :class:`IncompatibleStoreError` unless the store was built by ``embedder_identity``."""

    @abstractmethod
    def close(self) -> None:
        """Release file handles and locks."""

    @abstractmethod
    def __enter__(self) -> StoreBackend:
        """``with store:`` closes the store on leaving."""

    @abstractmethod
    def __exit__(self, *exc: object) -> None:
        """Close the store."""


class ReferenceStore(StoreBackend):
    """The boilerplate of a :class:`StoreBackend`, written once: a backend derives from this class and
    implements the abstract members (``embedder_identity``, ``dim``, ``add``, ``remove``, ``query``,
    ``contains``, ``info``); ``backend`` names it in :meth:`info`.
    """

    backend: str = "abstract"

    def fetch_vectors(self, reference_ids: Sequence[str]) -> np.ndarray | None:
        return None

    def check_compatible(self, embedder_identity: str) -> None:
        if embedder_identity != self.embedder_identity:
            raise IncompatibleStoreError(
                f"this store was built with the {embedder_kind(self.embedder_identity)} embedder "
                f"{self.embedder_identity!r} but the configured embedder is {embedder_kind(embedder_identity)} "
                f"{embedder_identity!r}; query with the same embedder (embedder.name, W, fusion fit"
                f"{_precision_hint(self.embedder_identity, embedder_identity)}), or rebuild the store"
            )

    def close(self) -> None:
        """Nothing to release unless the backend holds files or connections."""

    def __enter__(self) -> ReferenceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
