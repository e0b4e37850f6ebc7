"""When two id2 signals may be compared, and their distance.

Signals record the digest of the embedder that made them. Hashes of different embedders (or dimensions)
are never compared, version-1 (unversioned) signals never at all: their distance would mean nothing. The
signal types and the index both check with these functions and raise :class:`SignalIdentityError`.

**Distance.** ``1 - cosine`` (0 = same embedding, 2 = opposite); for videos the smallest distance between
any query keyframe and any reference keyframe.
"""

from __future__ import annotations

from .settings import embedder_in_use
from .signal_format import VERSION, Parsed, identity_digest

__all__ = ["SignalIdentityError", "check_comparable", "check_embedder_in_use", "check_versioned", "distance"]

#: Distances are rounded so the CLI prints short, stable numbers (6 decimals is far below any threshold).
_DIST_DECIMALS = 6


class SignalIdentityError(ValueError):
    """A well-formed signal that cannot be used here: unversioned, or made by another embedder / dimension."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        #: ``"unversioned"`` or ``"other embedder"`` (how an index build counts what it skipped)
        self.reason = reason


def check_versioned(name: str, parsed: Parsed) -> None:
    """Raise :class:`SignalIdentityError` for a version-1 signal (it does not name its embedder)."""
    if parsed.version != VERSION:
        raise SignalIdentityError(
            f"unversioned (format 1) {name} signal: it does not record which embedder made it, so it cannot be "
            f"compared safely. Re-hash the content, or, if this embedder made it, convert it with "
            f"upgrade_legacy_signal() (docs/guides/omm-operator.md, upgrading)",
            "unversioned",
        )


def check_embedder_in_use(name: str, parsed: Parsed) -> None:
    """Raise :class:`SignalIdentityError` unless ``parsed`` was made by the embedder in use."""
    check_versioned(name, parsed)
    emb = embedder_in_use()
    digest = identity_digest(emb.identity)
    if parsed.digest != digest:
        raise SignalIdentityError(
            f"{name} signal was made by embedder {parsed.digest} ({parsed.dim}-d); this process uses "
            f"{digest} ({emb.dim}-d, {emb.identity}): re-hash the content with this embedder",
            "other embedder",
        )
    if parsed.dim != emb.dim:
        # Same digest, other length: the digest was copied onto another embedding, or the payload was cut.
        raise SignalIdentityError(
            f"{name} signal names this process's embedder ({digest}) but holds {parsed.dim} values where "
            f"it makes {emb.dim}: the payload was truncated or altered; re-hash the content with this embedder",
            "other embedder",
        )


def check_comparable(name: str, a: Parsed, b: Parsed) -> None:
    """Raise :class:`SignalIdentityError` unless ``a`` and ``b`` were made by one embedder."""
    check_versioned(name, a)
    check_versioned(name, b)
    if a.digest != b.digest or a.dim != b.dim:
        raise SignalIdentityError(
            f"{name} hashes were made by different embedders ({a.digest}, {a.dim}-d vs {b.digest}, {b.dim}-d): "
            "their distance means nothing, so they are not compared",
            "other embedder",
        )


def distance(cos: float) -> float:
    """``1 - cos``, rounded to the distances the CLI prints."""
    # Clamped: float rounding can push the cosine of a vector with itself a hair above 1.
    return round(min(2.0, max(0.0, 1.0 - cos)), _DIST_DECIMALS)
