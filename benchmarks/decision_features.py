"""Is the decision model at the limit of its evidence? Other features and combination rules, same protocol.

    PYTHONPATH=. python benchmarks/decision_features.py --cache /tmp/i24 --md benchmarks/results/decision_features.md

(the first run fills the cache with whole-image and window vectors: ~12 minutes on 2 CPU cores; the cached
vectors decode back into near-copies of the photos, so delete the folder after use).

The shipped decision is a logistic model over two features, id2 and the SSCD window each over the query's
background, on the candidates of ``decision.DEFAULT_RANKINGS`` (id2's 20 and the fused best), with the
window floor bounded as shipped. Each row changes only the score: more features of the same evidence (the
gap to the query's best candidate, the cosines themselves, non-linear terms), per-signal models combined by
their maximum or noisy-OR (an edit one signal finds is enough), and one piece of new evidence with a control:
how alike the two images' colour layouts are (8 x 8 Lab thumbnails, no model), against the same layouts
shuffled among the references. Same candidates, folds (seeds 0-9) and operating point as
``candidate_source.py``; micro-AP is the ISC pool of each set's edits and every negative over the candidate
rows (held-out scores, windows as ``auto`` takes them), next to each signal's own cosine over the same rows.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _decision_tables import query_families, report_header, row_labels, seed_table, write_report  # noqa: E402
from candidate_source import ID2_ALONE, SHIPPED, union, with_candidates  # noqa: E402
from reference_crops import (  # noqa: E402
    FOLDS,
    L2,
    SEEDS,
    SETS,
    VARIANTS,
    Embeddings,
    Problem,
    build_problem,
    decide_scores,
    embed_everything,
    feature_rows,
    held_out_scores,
    load_images,
)

from id2_plugin.decision import DEFAULT_FEATURES, feature_matrix, fit_logistic, sigmoid  # noqa: E402
from id2_plugin.decision_fit import WINDOW_BUDGET, balanced_weights  # noqa: E402
from id2_plugin.metrics import micro_average_precision  # noqa: E402
from id2_plugin.train.crossval import grouped_folds  # noqa: E402

Features = tuple[np.ndarray, np.ndarray]


def colour_layouts(paths: list[str], emb: Embeddings) -> np.ndarray:
    """Each image's normalised square as an 8 x 8 Lab thumbnail, centred and of unit length."""
    out = []
    for path in paths:
        lab = cv2.cvtColor(np.ascontiguousarray(emb.fused.normalise(path)), cv2.COLOR_RGB2LAB).astype(np.float32)
        out.append(cv2.resize(lab, (8, 8), interpolation=cv2.INTER_AREA).reshape(-1))
    x = np.array(out)
    x -= x.mean(axis=1, keepdims=True)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def with_columns(base: Features, extra) -> Features:
    """``base`` (without and with the windows) with ``extra(x)`` columns appended to each."""
    return tuple(np.hstack([x, extra(x)]) for x in base)


def gap_to_best(p: Problem):
    """Each feature minus its best value among the query's candidates (0 for the best)."""
    q = p.cands.query

    def columns(x: np.ndarray) -> np.ndarray:
        best = np.full((len(p.rows), x.shape[1]), -np.inf)
        np.maximum.at(best, q, x)
        return x - best[q]

    return columns


def over_background(p: Problem, vectors: np.ndarray) -> np.ndarray:
    """One column: the cosine of ``vectors`` between query and candidate minus its median over the query's
    background candidates (as the shipped features)."""
    sims = vectors[p.rows] @ vectors[p.im.references].T
    background = np.median(np.take_along_axis(sims, p.top, axis=1), axis=1)
    q, r = p.cands.query, p.cands.reference
    return (sims[q, r] - background[q])[:, None]


def per_signal(p: Problem, base: Features, seed: int, combine) -> tuple[np.ndarray, np.ndarray]:
    """Held-out scores of one logistic model per feature, ``combine``d (e.g. their maximum)."""
    folds = grouped_folds(p.groups.tolist(), FOLDS, seed=seed)[p.cands.query]
    y = p.cands.correct
    out = [np.zeros((len(y), base[0].shape[1])) for _ in base]
    for f in np.unique(folds):
        train, held = folds != f, folds == f
        for j in range(base[0].shape[1]):
            coef, b = fit_logistic(base[1][train][:, [j]], y[train], l2=L2, weights=balanced_weights(y[train]))
            for o, x in zip(out, base):
                o[held, j] = sigmoid(x[held][:, [j]] @ coef + b)
    return combine(out[0]), combine(out[1])


def named(p: Problem, names: tuple[str, ...]) -> Features:
    """The decision module's named features of every candidate row, without and with the windows."""
    return (
        feature_matrix(replace(p.cands, window=None).evidence(), names),
        feature_matrix(p.cands.evidence(), names),
    )


def rows(p: Problem, emb: Embeddings) -> dict[str, list[dict]]:
    """Every row of the table: its decisions per fold seed."""
    base = feature_rows(p, VARIANTS[0])
    layout = colour_layouts(p.im.paths, emb)
    shuffled = layout.copy()
    shuffled[p.im.references] = layout[np.random.default_rng(0).permutation(p.im.references)]
    features = {
        "shipped: id2, SSCD window (over background)": base,
        "+ gap to the query's best candidate, both": with_columns(base, gap_to_best(p)),
        "+ the cosines themselves (id2, SSCD window)": named(p, (*DEFAULT_FEATURES, "id2", "sscd_window")),
        "+ max of the two": with_columns(base, lambda x: x.max(axis=1, keepdims=True)),
        "+ squares and product": with_columns(base, lambda x: np.stack([x[:, 0] ** 2, x[:, 1] ** 2, x.prod(1)], 1)),
        "+ hinges max(x - 0.2, 0)": with_columns(base, lambda x: np.maximum(x - 0.2, 0)),
        "+ colour layout (over background)": with_columns(base, lambda x: over_background(p, layout)),
        "control: + colour layouts shuffled among the references": with_columns(
            base, lambda x: over_background(p, shuffled)
        ),
    }
    out = {
        name: [
            decide_scores(p, held_out_scores(p, *f, grouped_folds(p.groups.tolist(), FOLDS, seed=seed)), WINDOW_BUDGET)
            for seed in SEEDS
        ]
        for name, f in features.items()
    }
    combiners = {
        "max of per-signal models": lambda s: s.max(axis=1),
        "noisy-OR of per-signal models": lambda s: 1 - np.prod(1 - s, axis=1),
    }
    for name, combine in combiners.items():
        out[name] = [decide_scores(p, per_signal(p, base, seed, combine), WINDOW_BUDGET) for seed in SEEDS]
    return out


def best_rows(p: Problem, scores: np.ndarray) -> np.ndarray:
    """Per query, the candidate row with the highest score (ties: the first row; -1 without candidates), the
    candidate ``decision_fit.best_per_query`` picks."""
    q = p.cands.query
    order = np.lexsort((np.arange(len(scores)), -scores, q))
    first = np.r_[True, q[order][1:] != q[order][:-1]]
    rows = np.full(len(p.rows), -1)
    rows[q[order[first]]] = order[first]
    return rows


def id2_route(p: Problem, base: Features, seed: int) -> dict[str, object]:
    """The shipped decision, and the same with a second way to a MATCH: the whole image's best candidate's
    id2 feature (id2 minus the background) above every negative's, the way the shipped operating point is
    set. Also the false matches when each operating point is set on the other folds' negatives only and
    applied to the held-out fold's (what reaches unseen unrelated queries)."""
    folds = grouped_folds(p.groups.tolist(), FOLDS, seed=seed)
    scores = held_out_scores(p, *base, folds)
    shipped = decide_scores(p, scores, WINDOW_BUDGET)
    rows = best_rows(p, scores[0])
    id2 = np.where(rows >= 0, base[0][rows, 0], -np.inf)
    correct = np.where(rows >= 0, p.cands.correct[rows], False)
    neg, fold = p.negative, folds[: len(p.rows)]
    route = shipped["match"] | (correct & (id2 > id2[neg].max()))
    leaks = {"shipped": 0, "with the id2 route": 0}
    for f in np.unique(fold):
        seen, held = neg & (fold != f), neg & (fold == f)
        a = shipped["score"] > shipped["score"][seen].max()
        leaks["shipped"] += int((held & a).sum())
        leaks["with the id2 route"] += int((held & (a | (id2 > id2[seen].max()))).sum())
    return {"shipped": shipped["match"], "with the id2 route": route, "leaks": leaks, "threshold": id2[neg].max()}


def route_table(p: Problem, base: Features, families: np.ndarray) -> list[str]:
    """MATCH per set (and on train's instruction-based edits) with and without the id2 route, mean over the
    seeds, and the false matches at operating points set without the held-out fold."""
    runs = [id2_route(p, base, seed) for seed in SEEDS]
    instruction = families == "train: instruction-based"
    lines = [
        "A second way to a MATCH: the decision's best candidate (whole image) whose id2 feature is above every "
        f"negative's ({np.mean([r['threshold'] for r in runs]):.3f}), beside the shipped operating point. MATCH "
        "means over the seeds; false: negatives at or above an operating point set on all negatives (0 by "
        "construction, the shipped protocol) and, per fold, on the other folds' negatives only (mean per "
        "fold assignment, of the negatives).",
        "",
        f"| decision | {' | '.join(SETS)} | train: instruction-based | false, points from all negatives | "
        "false, points from the other folds |",
        "|---|" + "---:|" * (len(SETS) + 3),
    ]
    for name in ("shipped", "with the id2 route"):
        cells = [f"{np.mean([r[name][p.sets == s].mean() for r in runs]):.3f}" for s in SETS]
        cells.append(f"{np.mean([r[name][: len(instruction)][instruction].mean() for r in runs]):.3f}")
        leak = np.mean([r["leaks"][name] for r in runs])
        lines.append(f"| {name} | {' | '.join(cells)} | 0 | {leak:.1f} of {int(p.negative.sum())} |")
    return lines


def micro_ap_table(runs: dict[str, list[dict]], p: Problem, labels: dict[str, str]) -> list[str]:
    """Per row and set, micro-AP over the candidate rows (mean over the seeds), then each signal's cosine."""
    lines = [
        "Micro-AP over the candidate rows: each set's edits and all negatives pooled (ISC), held-out scores, "
        "mean over the seeds; the last rows rank the same rows by one signal's cosine.",
        "",
        f"| score | {' | '.join(SETS)} |",
        "|---|" + "---:|" * len(SETS),
    ]
    for name, rs in runs.items():
        cells = [f"{np.mean([r[f'{s} micro-AP'] for r in rs]):.3f}" for s in SETS]
        lines.append(f"| {labels[name]} {name} | {' | '.join(cells)} |")
    evidence = p.cands.evidence()
    for name, score in (("id2", evidence.signal("id2")), ("SSCD window", evidence.window_or_whole())):
        cells = []
        for s in SETS:
            keep = (p.sets == s)[p.cands.query] | p.negative[p.cands.query]
            n_answers = sum(len(a) for a, q in zip(p.im.answers, p.sets == s) if q)
            cells.append(f"{micro_average_precision(score[keep], p.cands.correct[keep], n_answers):.3f}")
        lines.append(f"| {name} cosine alone | {' | '.join(cells)} |")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, help="folder of cached vectors (filled on the first run)")
    ap.add_argument("--md", type=Path, help="write the report here (it is printed either way)")
    args = ap.parse_args()
    t0 = time.time()
    im, emb = load_images(), Embeddings()
    v = embed_everything(im, emb, args.cache, crops=False)
    alone = build_problem(im, v, ID2_ALONE)
    p = union(alone, with_candidates(alone, SHIPPED, 1))
    runs = rows(p, emb)
    labels, legend = row_labels(runs)
    control = next(n for n in runs if n.startswith("control"))
    lines = [
        *report_header("Decision features and combination rules on the shipped candidates", t0),
        "",
        legend,
        "",
        *seed_table(runs, next(iter(runs)), control, labels),
        "",
        *micro_ap_table(runs, p, labels),
        "",
        *route_table(p, feature_rows(p, VARIANTS[0]), query_families(im)),
    ]
    write_report("\n".join(lines) + "\n", args.md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
