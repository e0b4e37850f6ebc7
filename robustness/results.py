"""What a robustness run produces: curve points, failure examples, series, and their aggregation.

A :class:`CurvePoint` is one (series, attack level) with the retrieval metrics of
:class:`id2_plugin.metrics.RetrievalScores`; :meth:`RobustnessResult.findings` aggregates the points into
the resize-policy comparison. Reports (:mod:`.report`) read only these classes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from id2_plugin.metrics import RetrievalScores

#: Metric fields copied from :class:`id2_plugin.metrics.Metrics` into every curve point.
METRIC_FIELDS = tuple(f.name for f in fields(RetrievalScores))


@dataclass(frozen=True)
class CurvePoint(RetrievalScores):
    """Metrics of one method (at one resize policy) on the queries attacked at one level.

    The metric fields (``top1`` ... ``n_references``) are inherited from
    :class:`id2_plugin.metrics.RetrievalScores`.
    """

    series: str
    method: str
    resize_policy: str
    attack: str
    label: str
    intensity: float
    #: 0 = clean, then 1..n from mildest to strongest within the family
    level: int
    #: 95% Wilson interval of top1
    top1_low: float = 0.0
    top1_high: float = 1.0
    #: the operating threshold (match.threshold) for the configured embedder's series, else None; the share
    #: of queries reported as a correct MATCH at it, and its 95% Wilson interval
    threshold: float | None = None
    recall_at_threshold: float | None = None
    recall_at_threshold_low: float | None = None
    recall_at_threshold_high: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        # Inheritance puts the metrics first; the JSON reports keep the point's coordinates first.
        coords = {k: v for k, v in d.items() if k not in METRIC_FIELDS}
        return {**coords, **{k: d[k] for k in METRIC_FIELDS}}


@dataclass
class FailureExample:
    """A query whose best-ranked reference is not its origin (the most confident such errors are kept)."""

    series: str
    attack: str
    label: str
    query: str
    wrong_reference: str
    true_reference: str
    wrong_score: float
    true_score: float
    query_thumb: bytes | None = None
    wrong_thumb: bytes | None = None
    true_thumb: bytes | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if not k.endswith("_thumb")}


@dataclass
class Series:
    """One curve family member: a method seen through one resize policy."""

    name: str
    method: str
    resize_policy: str
    primary: bool


@dataclass
class RobustnessResult:
    """Everything a report needs: curve points, failures, the suite, the series and provenance."""

    points: list[CurvePoint]
    failures: list[FailureExample]
    suite: list[dict[str, Any]]
    series: list[Series]
    provenance: dict[str, Any]
    dataset: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def point(self, series: str, label: str) -> CurvePoint | None:
        return next((p for p in self.points if p.series == series and p.label == label), None)

    def family_points(self, series: str, family: str) -> list[CurvePoint]:
        """The clean point then the family's levels, mildest first."""
        pts = [p for p in self.points if p.series == series and (p.attack == family or p.attack == "clean")]
        return sorted(pts, key=lambda p: p.level)

    def findings(self) -> dict[str, Any]:
        """Resize-policy comparison of each latent method: means over all attacked levels per policy.

        ``mean_<metric>[policy]`` and ``per_family_mean_<metric>[family][policy]`` for top-1, micro-AP and
        recall at 99.9% precision (ranking and global-threshold behaviour can disagree, so all are kept).
        """
        out: dict[str, Any] = {}
        attacked = [p for p in self.points if p.attack != "clean"]
        policies = sorted({p.resize_policy for p in attacked})
        if len(policies) < 2:
            return out
        families = list(dict.fromkeys(p.attack for p in attacked))
        for method in dict.fromkeys(p.method for p in attacked):
            mine = [p for p in attacked if p.method == method]
            pols = [pol for pol in policies if any(p.resize_policy == pol for p in mine)]
            if len(pols) < 2:
                continue
            entry: dict[str, Any] = {}
            for metric in ("top1", "micro_ap", "recall_at_p999"):
                entry[f"mean_{metric}"] = {
                    pol: float(np.mean([getattr(p, metric) for p in mine if p.resize_policy == pol])) for pol in pols
                }
                entry[f"per_family_mean_{metric}"] = {
                    fam: {
                        pol: float(
                            np.mean([getattr(p, metric) for p in mine if p.resize_policy == pol and p.attack == fam])
                        )
                        for pol in pols
                    }
                    for fam in families
                }
            out[method] = entry
        return out
