"""The ``fit-decision`` use case: embed real edits, unrelated photos and references, fit a decision model by
grouped cross-validation, choose its operating point, and say what it achieves beside the fused cosine."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .calibrate import calibrate_threshold
from .calibration_files import select_negatives
from .config import Config
from .decision import DEFAULT_RANKINGS, FEATURES, ROUTE_FEATURE, DecisionModel, Route, check_rankings, route_scores
from .decision_fit import (
    WINDOW_BUDGET,
    DecisionFit,
    QueryDecisions,
    best_per_query,
    candidate_set,
    cross_validated_scores,
    fit_rows,
    operating_point,
    route_floor,
    window_floor,
)
from .errors import ConfigError
from .eval_sets import load_images, load_pairs_for_eval, prepare_eval_set, query_labels
from .evaluate import EmbedderMethod, embed_images
from .signal_scores import SignalScores, signal_scores

#: SSCD cosine at or above which two origins count as one photo for the folds
SAME_PHOTO_SSCD = 0.5


@dataclass(frozen=True)
class DecisionData:
    """Edits then negatives as queries against one reference set: scores, ground truth, labels, groups."""

    scores: SignalScores
    positives: np.ndarray
    negative: np.ndarray
    #: per query: the manifest's folder (edits) or the negative's folder, and the edit family
    sets: list[str]
    families: list[str]
    groups: list[str]
    n_references: int
    embedder: str
    skipped: list[str]


def _negative_group(path: Path) -> str:
    # Photos of one person or scene come from one source: files named ``<source>__...`` share a group.
    head = path.name.split("__", 1)[0] if "__" in path.name else ""
    return f"neg:{path.parent.name}/{head}"


def _edit_groups(positives: np.ndarray, sscd_refs: np.ndarray) -> list[str]:
    """Queries whose origins are one photo (a twin, a shared origin, or SSCD >= SAME_PHOTO_SSCD) share a group."""
    from .train.crossval import origin_groups

    used = sorted(set(np.flatnonzero(positives.any(axis=0)).tolist()))
    group_of = dict(zip(used, origin_groups(sscd_refs[used], SAME_PHOTO_SSCD).tolist()))
    parent = {g: g for g in group_of.values()}

    def find(g: int) -> int:
        while parent[g] != g:
            g = parent[g]
        return g

    for row in positives:
        gs = [find(group_of[c]) for c in np.flatnonzero(row)]
        for g in gs[1:]:
            parent[g] = gs[0]
    return [f"edit:{find(group_of[int(np.flatnonzero(row)[0])])}" for row in positives]


def _manifest_names(pairs: Sequence[str | os.PathLike], queries: Sequence[Path]) -> list[str]:
    """Per query the name of the folder of the manifest that lists it (e.g. ``real-edits-hard``)."""
    from .pairs import load_pairs

    name = {p.query: Path(m).resolve().parent.name for m in pairs for p in load_pairs(m, check_files=False)}
    return [name.get(Path(q), "?") for q in queries]


def load_decision_data(
    cfg: Config,
    pairs: Sequence[str | os.PathLike],
    negative_files: Sequence[Path],
    distractor_files: Sequence[Path],
    *,
    holdout_every: int = 0,
    windows: bool = True,
    rankings: Sequence[tuple[str, int]] = DEFAULT_RANKINGS,
) -> DecisionData:
    """Embed everything once with the configured embedder; the windows of every query when ``windows``.

    ``holdout_every`` > 0 moves every that-many-th distractor to the negatives: unrelated queries of the same
    kind as the references (ImageNet-like photos beside photos of people) without a second folder of them.
    """
    if holdout_every > 0:
        negative_files = [*negative_files, *distractor_files[holdout_every - 1 :: holdout_every]]
        held = set(distractor_files[holdout_every - 1 :: holdout_every])
        distractor_files = [p for p in distractor_files if p not in held]
    from .pipeline import embedder_from_config

    embedder = embedder_from_config(cfg, in_memory_only=True)
    if len(embedder.signals) < 2:
        raise ConfigError(
            f"a decision model combines signals: the embedder {embedder.identity} has only one "
            "(use embedder.name: fused)"
        )
    check_rankings(rankings, list(embedder.signals))
    query_paths, ref_paths, positives = load_pairs_for_eval(list(pairs), distractor_files)
    neg_paths, _, _ = select_negatives(negative_files, [*query_paths, *ref_paths])
    data = prepare_eval_set(query_paths, ref_paths, positives, embedder.normalise)
    neg_images, kept, errors = load_images(neg_paths, embedder.normalise, "loading negatives")
    if not data.positives.any() or not neg_images:
        raise ConfigError("fit-decision needs readable edits with readable origins and readable negatives")
    method = EmbedderMethod(embedder)
    refs = embed_images(method, data.references, progress="references")
    images = [*data.queries, *neg_images]
    vectors = embed_images(method, images, progress="queries")
    searched = np.ones(len(images), bool) if windows else None
    scores = signal_scores(embedder, images, vectors, refs, searched, progress="query windows")
    n_edit = len(data.queries)
    all_pos = np.vstack([data.positives, np.zeros((len(neg_images), len(refs)), bool)])
    sets = _manifest_names(pairs, data.query_paths) + [Path(neg_paths[i]).parent.name for i in kept]
    families = [
        str(f or s)
        for f, s in zip(
            query_labels(list(pairs), data.query_paths, "family"), query_labels(list(pairs), data.query_paths, "source")
        )
    ]
    families += ["negative"] * len(neg_images)
    a, b, _ = embedder.signals.get("sscd", next(iter(embedder.signals.values())))
    groups = _edit_groups(data.positives, refs[:, a:b]) + [_negative_group(Path(neg_paths[i])) for i in kept]
    negative = np.arange(len(images)) >= n_edit
    skipped = [*data.skipped, *(f"unreadable, skipped: {e}" for e in errors)]
    return DecisionData(scores, all_pos, negative, sets, families, groups, len(refs), embedder.identity, skipped)


def _decisions_auto(whole: QueryDecisions, with_w: QueryDecisions, threshold: float, floor: float) -> QueryDecisions:
    """What ``match.windows: auto`` decides: the windows are searched only below the threshold and from the floor."""
    looked = (whole.score < threshold) & (whole.score >= floor)
    pick = lambda a, b: np.where(looked, b, a)  # noqa: E731
    return QueryDecisions(
        pick(whole.score, with_w.score), pick(whole.reference, with_w.reference), pick(whole.correct, with_w.correct)
    )


def _cosine_baseline(d: DecisionData, target_fpr: float, confidence: float) -> tuple[QueryDecisions, float]:
    """The fused cosine with windows (each reference's best over the whole query and its windows) at the
    threshold chosen for the same target on the same negatives."""
    fused = d.scores.fused()
    if d.scores.window is not None:
        from .decision import WINDOW_SIGNAL

        w = d.scores.weights[WINDOW_SIGNAL]
        fused = np.maximum(fused, fused + w * (np.nan_to_num(d.scores.window, nan=-1.0) - d.scores.sims[WINDOW_SIGNAL]))
    top = fused.argmax(axis=1)
    rows = np.arange(len(fused))
    best = QueryDecisions(fused[rows, top], top, d.positives[rows, top])
    edit = ~d.negative
    cal = calibrate_threshold(
        best.score[edit & best.correct], best.score[d.negative], target_fpr=target_fpr, confidence=confidence
    )
    return best, cal.threshold


def _report(
    d: DecisionData, final: QueryDecisions, threshold: float, cosine: QueryDecisions, cos_threshold: float
) -> dict[str, Any]:
    per_set: dict[str, dict[str, Any]] = {}
    for label in [
        *dict.fromkeys(s for s, n in zip(d.sets, d.negative) if not n),
        *dict.fromkeys(f for f, n in zip(d.families, d.negative) if not n),
    ]:
        sel = np.array([(s == label or f == label) and not n for s, f, n in zip(d.sets, d.families, d.negative)])
        per_set[label] = dict(
            n=int(sel.sum()),
            top1=float(final.correct[sel].mean()),
            match=float((final.correct & (final.score >= threshold))[sel].mean()),
            cosine_top1=float(cosine.correct[sel].mean()),
            cosine_match=float((cosine.correct & (cosine.score >= cos_threshold))[sel].mean()),
        )
    negatives: dict[str, dict[str, Any]] = {}
    for label in dict.fromkeys(s for s, n in zip(d.sets, d.negative) if n):
        sel = np.array([s == label and n for s, n in zip(d.sets, d.negative)])
        negatives[label] = dict(
            n=int(sel.sum()),
            false=int((final.score[sel] >= threshold).sum()),
            cosine_false=int((cosine.score[sel] >= cos_threshold).sum()),
        )
    return dict(per_set=per_set, negatives=negatives, cosine_threshold=cos_threshold)


def fit_decision_files(
    cfg: Config,
    pairs: Sequence[str | os.PathLike],
    negative_files: Sequence[Path],
    distractor_files: Sequence[Path],
    *,
    features: Sequence[str],
    target_fpr: float,
    confidence: float = 0.95,
    n_folds: int = 5,
    seed: int = 0,
    holdout_every: int = 0,
    l2: float = 1e-3,
    rankings: Sequence[tuple[str, int]] = DEFAULT_RANKINGS,
    window_budget: float | None = WINDOW_BUDGET,
    route: str | None = ROUTE_FEATURE,
) -> tuple[DecisionFit, dict[str, Any]]:
    """Fit, cross-validate and calibrate a decision model for the configured embedder (see ``fit-decision``)."""
    from .train.crossval import grouped_folds

    d = load_decision_data(cfg, pairs, negative_files, distractor_files, holdout_every=holdout_every, rankings=rankings)
    _, group_ids = np.unique(np.array(d.groups), return_inverse=True)
    folds = grouped_folds(group_ids.tolist(), n_folds, seed=seed)
    cands = candidate_set(d.scores.sims, d.scores.weights, d.positives, d.scores.window, rankings)
    with_rows, whole_rows = cross_validated_scores(cands, features, folds, l2=l2)
    n = len(d.positives)
    with_w, whole = best_per_query(cands, with_rows, n), best_per_query(cands, whole_rows, n)
    edit = ~d.negative
    first = calibrate_threshold(
        with_w.score[edit & with_w.correct], with_w.score[d.negative], target_fpr=target_fpr, confidence=confidence
    )
    floor = window_floor(
        whole.score, with_w.score, first.threshold, unrelated=whole.score[d.negative], budget=window_budget
    )
    final = _decisions_auto(whole, with_w, first.threshold, floor)
    positives = QueryDecisions(final.score[edit], final.reference[edit], final.correct[edit])
    cosine, cos_threshold = _cosine_baseline(d, target_fpr, confidence)
    op = operating_point(
        final.score[d.negative],
        positives,
        target_fpr=target_fpr,
        confidence=confidence,
        n_references=d.n_references,
        cosine_threshold=cos_threshold,
        floor=floor,
    )
    second = None
    if route is not None:
        # the route adds no negative above the threshold (its floor is above all of them): the operating point
        # stands, and the held-out decisions are taken again with it
        values = FEATURES[route](dataclasses.replace(cands, window=None).evidence())
        second = Route(route, route_floor(values, d.negative[cands.query]))
        routed = route_scores(values, second.floor, op.threshold)
        with_w = best_per_query(cands, np.maximum(with_rows, routed), n)
        whole = best_per_query(cands, np.maximum(whole_rows, routed), n)
        final = _decisions_auto(whole, with_w, first.threshold, floor)
        op = dataclasses.replace(op, recall=float((final.correct & (final.score >= op.threshold))[edit].mean()))
    coef, b = fit_rows(cands, np.arange(len(cands.query)), features, l2)
    report = _report(d, final, op.threshold, cosine, cos_threshold)
    model = DecisionModel(
        tuple(features),
        tuple(float(c) for c in coef),
        b,
        d.embedder,
        op,
        {
            "fit": f"logistic regression, L2 {l2:g}, classes balanced; {cands.query.size} candidate rows",
            "folds": n_folds,
            "seed": seed,
            "n_edits": int(edit.sum()),
            "n_negatives": int(d.negative.sum()),
            "window_budget": window_budget,
            "cross_validated": report,
        },
        tuple(rankings),
        second,
    )
    report["skipped"] = d.skipped
    report["operating_point"] = dataclasses.asdict(op)
    report["route"] = None if second is None else dataclasses.asdict(second)
    return DecisionFit(model, report), report


__all__ = ["DecisionData", "fit_decision_files", "load_decision_data"]
