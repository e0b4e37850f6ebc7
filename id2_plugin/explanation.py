"""What explaining a match finds: :class:`Explanation` (each signal's cosine, the latent cell map, the local
feature matches) and :class:`LocalMatches`. Plain data, below both :mod:`id2_plugin.explain` (which computes
it) and :mod:`id2_plugin._explain_render` (which draws it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .types import PairDecision


@dataclass(frozen=True)
class LocalMatches:
    """SIFT keypoints matched between query and reference, in normalised-image pixels."""

    query_points: np.ndarray  # N x 2 (x, y)
    reference_points: np.ndarray  # N x 2
    inlier_mask: np.ndarray  # N bools: consistent with the RANSAC homography
    keypoints: tuple[int, int]  # keypoints found in (query, reference)

    @property
    def inliers(self) -> int:
        return int(self.inlier_mask.sum())

    @property
    def matches(self) -> int:
        return len(self.inlier_mask)


@dataclass(frozen=True)
class Explanation:
    """What :func:`explain_match` found. ``scores``: signal -> cosine (``id2``/``vae_raw``, ``sscd``,
    ``fused``); ``cell_similarity``: latent ``H x W`` cosine map (None without a latent signal);
    ``local``: SIFT matches (None when OpenCV is not installed); ``decision``: the decision on the pair as
    identification takes it against a store (None: no store, the pair's fused cosine decides against the
    cosine operating point ``threshold``)."""

    query: str
    reference: str
    scores: dict[str, float]
    cell_similarity: np.ndarray | None
    local: LocalMatches | None
    threshold: float
    embedder: str
    out: Path | None = None
    #: where each part sits in the written picture: name -> (left, top, right, bottom) pixels
    panels: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)
    decision: PairDecision | None = None

    @property
    def score(self) -> float:
        """The score identification ranks by: ``fused`` when present, else the only signal's."""
        return self.scores.get("fused", next(iter(self.scores.values())))

    @property
    def is_match(self) -> bool:
        """The store decision when there is one, else the pair's cosine against the cosine threshold."""
        return self.decision.is_match if self.decision is not None else self.score >= self.threshold

    @property
    def inliers(self) -> int | None:
        return self.local.inliers if self.local is not None else None

    def summary(self) -> list[str]:
        """The lines written on the picture and printed by ``id2-plugin explain``."""
        verdict = "MATCH" if self.is_match else "NO MATCH"
        d = self.decision
        if d is None:
            lines = [f"score {self.score:.4f} vs threshold {self.threshold:.3f}: {verdict} (the pair alone)"]
        else:
            lines = [f"decision score {d.score:.4f} vs threshold {d.threshold:.3f}: {verdict}", _store_line(d)]
        lines.append("signals: " + "   ".join(f"{name} {value:.4f}" for name, value in self.scores.items()))
        if self.local is not None:
            lines.append(
                f"SIFT + RANSAC: {self.local.inliers} inliers of {self.local.matches} matches "
                f"({self.local.keypoints[0]} / {self.local.keypoints[1]} keypoints)"
            )
        if self.cell_similarity is not None:
            c = self.cell_similarity
            lines.append(f"latent cells {c.shape[0]}x{c.shape[1]}: mean cosine {c.mean():.3f}, lowest {c.min():.3f}")
        return lines

    def to_dict(self) -> dict[str, Any]:
        cells = self.cell_similarity
        return {
            "query": self.query,
            "reference": self.reference,
            "scores": dict(self.scores),
            "score": self.score,
            "is_match": self.is_match,
            "decision": None if self.decision is None else self.decision.to_dict(),
            "threshold": self.threshold,
            "embedder": self.embedder,
            "cell_similarity": None
            if cells is None
            else {
                "shape": list(cells.shape),
                "mean": round(float(cells.mean()), 6),
                "min": round(float(cells.min()), 6),
            },
            "local_features": None
            if self.local is None
            else {
                "inliers": self.local.inliers,
                "matches": self.local.matches,
                "keypoints": list(self.local.keypoints),
            },
            "out": str(self.out) if self.out else None,
        }


def _store_line(d: PairDecision) -> str:
    looked = f"windows searched ({d.window or 'the whole image'} counted)" if d.windows_searched else "whole image"
    other = d.best_other
    ahead = (
        f"ranks {d.rank} of the query's {d.candidates} store candidates"
        if other is None or d.rank == 1
        else f"ranks {d.rank}: {other.uri} scores {other.score:.4f}"
    )
    return f"against the store: {ahead}; {looked}"


__all__ = ["Explanation", "LocalMatches"]
