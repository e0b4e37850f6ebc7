"""The hook context: what every ``id2_identify_origin`` implementation gets besides the media (the embedder,
the reference store, the match settings and the decision model). Plain data of the kernel layer, so the
hook specification, the built-in search and third-party plugins all import it from below."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .decision import FUSED

if TYPE_CHECKING:
    from .decision import DecisionModel
    from .embedders.base import ImageEmbedder
    from .stores.base import ReferenceStore


@dataclass
class IdentifyContext:
    """What :func:`id2_identify_origin` implementations get besides the media."""

    embedder: ImageEmbedder
    store: ReferenceStore
    k: int = 5
    threshold: float = 0.5
    #: query-time rotations searched (``match.rotations``) and whether mirrored too (``match.mirror``)
    rotations: tuple[int, ...] = (0,)
    mirror: bool = False
    #: query windows searched as a second look (``match.windows``: ``auto``, ``always`` or ``off``)
    windows: str = "auto"
    #: the decision model re-scoring the candidates (None: the store's cosine decides)
    decision: DecisionModel | None = None

    @property
    def rankings(self) -> tuple[tuple[str, int], ...]:
        """The store rankings each query's candidates come from, (ranking, how many) in order: the decision
        model's (the first fetching at least ``k``, so that ``k`` matches can be shown), or the store's top
        ``k`` by the fused cosine when the cosine decides."""
        if self.decision is None:
            return ((FUSED, self.k),)
        (first, n), *rest = self.decision.candidates
        return ((first, max(self.k, n)), *rest)

    @property
    def window_floor(self) -> float:
        """Below this best score the windows are not searched in ``auto`` mode (they cannot change the decision)."""
        op = self.decision.operating_point if self.decision is not None else None
        return op.window_floor if op is not None else float("-inf")


__all__ = ["IdentifyContext"]
