"""Plain data types shared by the hooks, the library API, the CLI and the adapters."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Match:
    """One reference ranked against a query.

    ``score`` is what the decision compares with the threshold: the decision model's score in [0, 1] when
    one holds for the embedder (then ``cosine`` is the store's cosine beside it), else the cosine in [-1, 1].
    """

    reference_id: str
    uri: str
    score: float
    rank: int
    sha256: str = ""
    labels: tuple[str, ...] = ()
    #: each signal's own cosine, e.g. (("id2", 0.81), ("sscd", 0.42)), for a fused embedding (empty otherwise)
    signals: tuple[tuple[str, float], ...] = ()
    #: the query variant that scored best when rotations/mirror are searched, e.g. "rot90" ("" = upright)
    orientation: str = ""
    #: the query window that scored best when windows are searched, e.g. "r0c1" ("" = the whole image)
    window: str = ""
    #: the store's (fused) cosine when ``score`` is a decision score; None when ``score`` is that cosine
    cosine: float | None = None

    @classmethod
    def ranked(
        cls, reference_id: str, uri: str, score: float, rank: int, sha256: str, labels: tuple[str, ...]
    ) -> Match:
        """A store's result row as a Match, equal to the keyword constructor's.

        A batched lookup makes tens of thousands of these per second; the frozen dataclass ``__init__`` (one
        ``object.__setattr__`` per field) was a tenth of a 10M-reference lookup's time.
        """
        m = object.__new__(cls)
        m.__dict__.update(
            _MATCH_DEFAULTS, reference_id=reference_id, uri=uri, score=score, rank=rank, sha256=sha256, labels=labels
        )
        return m

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["labels"] = list(self.labels)
        d["signals"] = dict(self.signals)
        if not self.orientation:  # the usual upright answer keeps the established JSON shape
            d.pop("orientation")
        if not self.window:
            d.pop("window")
        if self.cosine is None:
            d.pop("cosine")
        return d


_MATCH_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Match) if f.default is not dataclasses.MISSING}


@dataclass(frozen=True)
class PairDecision:
    """The decision on one (query, reference) pair as identification takes it against a store (``explain``
    with a store): the decision score, the threshold, whether the query windows were searched and which one
    counted, and where the reference ranks among the query's store candidates."""

    score: float
    threshold: float
    #: the query window whose evidence beat the whole image's ("" = the whole image)
    window: str
    windows_searched: bool
    #: 1 + the store candidates (other than the reference itself) scoring above the reference
    rank: int
    #: store candidates the reference was ranked among (the decision model's rankings)
    candidates: int
    #: the best-scoring store candidate other than the reference (None: the store has no other)
    best_other: Match | None

    @property
    def is_match(self) -> bool:
        return self.score >= self.threshold

    def to_dict(self) -> dict[str, Any]:
        other = self.best_other
        return {
            "score": round(self.score, 6),
            "threshold": self.threshold,
            "is_match": self.is_match,
            "window": self.window,
            "windows_searched": self.windows_searched,
            "rank": self.rank,
            "candidates": self.candidates,
            "best_other": None if other is None else {"uri": other.uri, "sha256": other.sha256, "score": other.score},
        }


@dataclass(frozen=True)
class OriginReport:
    """The answer to "which reference is this an edited or degraded version of?".

    ``matches`` are ranked best first (rank 1). ``is_match`` is the decision: the best score reached
    ``threshold``. ``score_kind`` says what the scores are (``decision``: the calibrated decision model's,
    ``cosine``: the store's), ``false_match_rate`` the calibrated bound on the share of unrelated queries
    reported as a match at this store's size (None when uncalibrated). ``embedder`` and ``projection``
    identify the model that produced the scores so a report can be reproduced; ``timings_ms`` splits the
    latency into stages.
    """

    matches: tuple[Match, ...]
    is_match: bool
    threshold: float
    embedder: str
    projection: str | None
    timings_ms: dict[str, float] = field(default_factory=dict)
    query: str | None = None
    score_kind: str = "cosine"
    false_match_rate: float | None = None

    @property
    def decision(self) -> str:
        return "match" if self.is_match else "no_match"

    @property
    def best(self) -> Match | None:
        return self.matches[0] if self.matches else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "decision": self.decision,
            "is_match": self.is_match,
            "threshold": self.threshold,
            "score_kind": self.score_kind,
            "false_match_rate": self.false_match_rate,
            "best": self.best.to_dict() if self.best else None,
            "matches": [m.to_dict() for m in self.matches],
            "embedder": self.embedder,
            "projection": self.projection,
            "timings_ms": dict(self.timings_ms),
        }


@dataclass(frozen=True)
class ReferenceRecord:
    """Metadata stored beside a reference vector."""

    sha256: str
    uri: str
    labels: tuple[str, ...] = ()
    reference_id: str = ""
    added_at: str = ""


@dataclass(frozen=True)
class AddResult:
    """What an ``add`` did: ids of new references and the sha256 of inputs skipped as duplicates."""

    added: tuple[str, ...]
    duplicates: tuple[str, ...]


@dataclass(frozen=True)
class StoreInfo:
    """Summary of a reference store."""

    backend: str
    location: str
    count: int
    dim: int
    embedder: str
    index_type: str
    generation: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
