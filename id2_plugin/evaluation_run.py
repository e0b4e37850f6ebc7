"""The ``evaluate`` use case: retrieval metrics and decisions of id2 and its baselines on a pairs set, as a
library function the ``evaluate`` command and a Python user run alike."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .assembly import build_embedder, decision_settings, sscd_available
from .cache import latent_cache
from .calibration_files import select_negatives
from .config import Config
from .decision_metrics import decision_metrics
from .errors import ConfigError
from .eval_sets import EvalSet, load_images, load_pairs_for_eval, prepare_eval_set, query_labels, scan_folders
from .evaluate import default_methods, metrics_by_group, score_methods
from .metrics import DEFAULT_K, Metrics
from .per_query import max_distance_bits, method_bits, query_records, write_records
from .pipeline import embedder_from_config

PathLike = str | os.PathLike


@dataclasses.dataclass(frozen=True)
class EvaluationRun:
    """What an evaluation found: per-method metrics (overall and per manifest group), the deployment's decisions,
    and what was skipped. ``to_dict()`` is the ``evaluate --json`` document."""

    #: method name -> its retrieval metrics
    methods: dict[str, Metrics]
    #: group key (``source``, ``family``) -> label -> method name -> metrics
    by_group: dict[str, dict[str, dict[str, Metrics]]]
    #: the default method's decisions at the threshold (overall, ``"<method> per <key>"`` per group) and the
    #: fused cosine's when a decision model decides, as :func:`~id2_plugin.decision_metrics.decision_metrics` dicts
    decisions: dict[str, Any]
    #: hash method name -> its number of bits (thresholds also reported as Hamming distances)
    bits: dict[str, int]
    default: str
    windows: str
    n_queries: int
    n_negatives: int
    n_references: int
    n_origins: int
    k: int
    embedder: str
    decision: str
    threshold: float
    #: paths skipped (unwalkable, unreadable), each as a ``skipped ...`` / ``unreadable, skipped: ...`` line
    skipped: list[str]
    #: negatives dropped as byte-identical copies of a reference or query
    dropped_negatives: int = 0
    per_query: str | None = None

    def hamming_thresholds(self, name: str) -> dict[str, Any]:
        """A hash method's thresholds as the largest matching Hamming distance (the unit HMA configures)."""
        m, n_bits = self.methods[name], self.bits[name]
        return {
            "n_bits": n_bits,
            **{
                f"{key}_bits": None if thr is None else max_distance_bits(thr, n_bits)
                for key, thr in (("threshold_at_p90", m.threshold_at_p90), ("threshold_at_p999", m.threshold_at_p999))
            },
        }

    def to_dict(self) -> dict[str, Any]:
        """The ``evaluate --json`` document."""
        methods = {
            name: dict(m.to_dict(), **(self.hamming_thresholds(name) if name in self.bits else {}))
            for name, m in self.methods.items()
        }
        doc: dict[str, Any] = {"methods": methods}
        for key in ("default", "windows", "n_queries", "n_negatives", "n_references", "k", "embedder"):
            doc[key] = getattr(self, key)
        doc.update(decision=self.decision, threshold=self.threshold, skipped=self.skipped, per_query=self.per_query)
        for key, table in self.by_group.items():
            doc[f"per_{key}"] = {label: {name: m.to_dict() for name, m in ms.items()} for label, ms in table.items()}
        doc["decisions"] = self.decisions
        return doc


def comparison_methods(embedder: Any, cfg: Config, decision: Any = None) -> list[Any]:
    """The configured embedder's methods, plus ``sscd`` and ``fused`` whenever SSCD resolves, and baselines;
    ``fused`` scored by the ``decision`` model when one decides (and ``fused_cosine`` beside it)."""
    sscd = None
    if "sscd" not in embedder.signals and embedder.name != "fused" and sscd_available(cfg.embedder) is None:
        sscd = build_embedder(dataclasses.replace(cfg.embedder, name="sscd", weights=cfg.embedder.sscd_weights))
    latent = embedder.latent_part()
    return default_methods(
        embedder, latent_cache(getattr(latent, "encoder", None), cfg.cache.dir), sscd=sscd, decision=decision
    )


def run_evaluation(
    cfg: Config,
    pairs: PathLike | Sequence[PathLike],
    *,
    distractors: Sequence[PathLike] = (),
    max_distractors: int | None = None,
    negatives: Sequence[PathLike] = (),
    k: int = DEFAULT_K,
    methods: Sequence[str] = (),
    per_query: PathLike | None = None,
    report: Callable[[str], None] | None = None,
    progress: bool = False,
) -> EvaluationRun:
    """Evaluate the configured embedder and the baselines on the pairs manifest ``pairs`` (JSONL
    ``{query, origin}``; several are pooled), what ``id2-plugin evaluate`` runs.

    ``distractors`` are extra references (folders recurse; the first ``max_distractors``), ``negatives``
    unrelated queries without an origin (copies of a reference or query dropped). ``methods`` restricts the
    methods by name (default: all available). ``per_query`` writes one record per query and method (.csv, else
    JSON Lines). ``report`` receives each problem as found (a path skipped, a negative dropped); skipped paths
    are also listed in the result. Raises :class:`~id2_plugin.errors.ConfigError` on a bad argument or when no
    readable query has a readable origin.
    """
    if k < 1:
        raise ConfigError(f"--k must be >= 1, got {k}")
    say = report or (lambda line: None)
    # The manifest and folders first: a wrong path fails before the models load.
    distractor_files, skipped = scan_folders(distractors, say)
    negative_files, problems = scan_folders(negatives, say)
    skipped += problems
    query_paths, ref_paths, positives = load_pairs_for_eval(pairs, distractor_files, max_distractors)
    embedder = embedder_from_config(cfg, in_memory_only=True)
    decision, threshold = decision_settings(cfg.match, embedder)
    chosen = _chosen_methods(comparison_methods(embedder, cfg, decision), methods)
    data = prepare_eval_set(query_paths, ref_paths, positives, embedder.normalise, progress=progress)
    data, dropped = _with_negatives(data, negative_files, embedder.normalise, say, progress)
    for line in data.skipped:
        say(line)
    skipped += data.skipped
    if not data.queries or not data.positives.any():
        raise ConfigError("nothing to evaluate: no readable query with a readable origin")
    groups = {key: query_labels(pairs, data.query_paths, key) for key in ("source", "family")}
    groups = {key: labels for key, labels in groups.items() if any(labels)}
    windows = {embedder.name: (cfg.match.windows, threshold)} if cfg.match.windows != "off" else None
    sims = score_methods(data.queries, data.references, chosen, windows=windows, progress=progress)
    results, by_group = metrics_by_group(sims, data.positives, groups=groups, k=k)
    bits = {m.name: method_bits(m) for m in chosen if method_bits(m)}
    if per_query is not None:
        _write_per_query(per_query, sims, data, bits)
    n_neg = int((~data.positives.any(axis=1)).sum())
    return EvaluationRun(
        methods=results,
        by_group=by_group,
        decisions=_decisions(sims, data.positives, embedder.name, threshold, decision, groups),
        bits=bits,
        default=embedder.name,
        windows=cfg.match.windows,
        n_queries=len(data.queries) - n_neg,
        n_negatives=n_neg,
        n_references=len(data.references),
        n_origins=int(data.positives.any(axis=0).sum()),
        k=k,
        embedder=embedder.identity,
        decision="model" if decision is not None else "cosine",
        threshold=threshold,
        skipped=skipped,
        dropped_negatives=dropped,
        per_query=None if per_query is None else str(per_query),
    )


def _chosen_methods(methods: list[Any], names: Sequence[str]) -> list[Any]:
    if not names:
        return methods
    unknown = [n for n in names if n not in {m.name for m in methods}]
    if unknown:
        raise ConfigError(
            f"--method {', '.join(unknown)} is not available with this configuration "
            f"(available: {', '.join(m.name for m in methods)})"
        )
    return [m for m in methods if m.name in names]


def _with_negatives(
    data: EvalSet, negative_files: list[Path], normalise: Any, say: Callable[[str], None], progress: bool
) -> tuple[EvalSet, int]:
    """``data`` with the readable negatives appended as queries without an origin (copies of a reference or
    query dropped: they are not unrelated), and how many were dropped."""
    if not negative_files:
        return data, 0
    paths, _, dropped = select_negatives(negative_files, [*data.query_paths, *data.reference_paths])
    if dropped:
        say(f"dropped {dropped} negative(s) identical to a reference or query")
    images, kept, errors = load_images(paths, normalise, "loading negatives" if progress else False)
    return dataclasses.replace(
        data,
        queries=[*data.queries, *images],
        query_paths=[*data.query_paths, *(paths[i] for i in kept)],
        positives=np.vstack([data.positives, np.zeros((len(images), data.positives.shape[1]), bool)]),
        skipped=[*data.skipped, *(f"unreadable, skipped: {e}" for e in errors)],
    ), dropped


def _decisions(
    sims: dict[str, Any], positives: Any, default: str, threshold: float, decision: Any, groups: dict[str, Any]
) -> dict[str, Any]:
    """The default method's decisions at the configured threshold (overall and per group), and the fused
    cosine's at its calibrated cosine threshold when a decision model decides."""
    out: dict[str, Any] = {}
    if default in sims:
        out[default] = decision_metrics(sims[default], positives, threshold).to_dict()
        for key, labels in groups.items():
            lab = np.array([x or "" for x in labels], dtype=object)
            out[f"{default} per {key}"] = {
                label: decision_metrics(sims[default][lab == label], positives[lab == label], threshold).to_dict()
                for label in sorted({x for x in lab if x})
            }
    op = decision.operating_point if decision is not None else None
    if op is not None and "fused_cosine" in sims:
        out["fused_cosine"] = decision_metrics(sims["fused_cosine"], positives, op.cosine_threshold).to_dict()
    return out


def _write_per_query(path: PathLike, sims: dict[str, Any], data: EvalSet, bits: dict[str, int]) -> None:
    per_method = [
        query_records(name, s, data.positives, data.query_paths, data.reference_paths, bits.get(name))
        for name, s in sims.items()
    ]
    write_records(path, [rows[i] for i in range(len(data.query_paths)) for rows in per_method])  # grouped by query
