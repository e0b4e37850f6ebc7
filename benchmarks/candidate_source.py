"""Which part of "id2 alone" helps the re-posed edits: the candidates it brings or the background it sets?

    PYTHONPATH=. python benchmarks/candidate_source.py --cache /tmp/i24 --md benchmarks/results/candidate_source.md

(the first run fills the cache with whole-image and window vectors: ~12 minutes on 2 CPU cores; the cached
vectors decode back into near-copies of the photos, so delete the folder after use).

``benchmarks/fusion_refit.py`` found that taking each query's 20 store candidates and its background (the
median cosine of those candidates, per signal, which the shipped features subtract) by id2 alone instead of
the shipped fused cosine raises real-edits-hard MATCH at the operating point (0.769 -> 0.803) but lowers
real-edits-train (0.930 -> 0.922). The two roles are separated here: the candidates by one ranking and the
background from the other's top 20. Same features (id2 and SSCD window over the background), protocol, folds
and operating point as ``reference_crops.py`` (fold seeds 0-9); nothing is fitted on the background's choice.
The last rows add the fused cosine's top few to id2's 20: what ships (``decision.DEFAULT_RANKINGS``) is id2's
20, whose median is the background, and the fused best, which keeps the copies and crops SSCD finds, with the
window floor bounded so that at most 30% of unrelated queries take the second look (the last row).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _decision_tables import family_table, query_families, report_header, row_labels, seed_table, write_report  # noqa: E402
from reference_crops import (  # noqa: E402
    SEEDS,
    TOP,
    VARIANTS,
    Embeddings,
    Problem,
    build_problem,
    decide,
    embed_everything,
    feature_rows,
    load_images,
)

from id2_plugin.decision import FUSED, candidate_background, top_candidates  # noqa: E402
from id2_plugin.decision_fit import WINDOW_BUDGET, candidate_set  # noqa: E402

SHIPPED = {"id2": 0.45, "sscd": 0.55}
ID2_ALONE = {"id2": 1.0, "sscd": 0.0}


def with_background(p: Problem, weights: dict[str, float]) -> Problem:
    """``p`` with each query's background taken from its top 20 by the ``weights`` fused cosine."""
    fused = sum(w * p.sims[n] for n, w in weights.items())
    background = candidate_background(p.sims, top_candidates(fused, TOP))
    q = p.cands.query
    return replace(p, cands=replace(p.cands, background={n: b[q] for n, b in background.items()}))


def union(p: Problem, other: Problem) -> Problem:
    """``p`` whose queries also bring ``other``'s candidates (each (query, reference) row once), with
    ``p``'s background."""
    rows = np.unique(np.concatenate([np.stack([c.query, c.reference], axis=1) for c in (p.cands, other.cands)]), axis=0)
    q, r = rows[:, 0], rows[:, 1]
    background = {n: b[np.searchsorted(p.cands.query, q)] for n, b in p.cands.background.items()}
    cands = replace(
        p.cands,
        query=q,
        reference=r,
        signals={n: p.sims[n][q, r] for n in p.cands.signals},
        window=p.window[q, r],
        correct=p.positives[q, r],
        background=background,
    )
    return replace(p, cands=cands)


def with_candidates(p: Problem, weights: dict[str, float], n: int) -> Problem:
    """``p`` whose candidates are each query's top ``n`` by the ``weights`` fused cosine (its background kept)."""
    cands = candidate_set(p.sims, weights, p.positives, p.window, ((FUSED, n),))
    q = cands.query
    background = {name: b[np.searchsorted(p.cands.query, q)] for name, b in p.cands.background.items()}
    return replace(p, cands=replace(cands, background=background))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, help="folder of cached vectors (filled on the first run)")
    ap.add_argument("--md", type=Path, help="write the report here (it is printed either way)")
    args = ap.parse_args()
    t0 = time.time()
    im, emb = load_images(), Embeddings()
    v = embed_everything(im, emb, args.cache, crops=False)
    shipped, alone = build_problem(im, v, SHIPPED), build_problem(im, v, ID2_ALONE)
    problems = {
        "before: candidates and background by the fused cosine": shipped,
        "candidates fused, background by id2 alone": with_background(shipped, ID2_ALONE),
        "candidates by id2 alone, background fused": with_background(alone, SHIPPED),
        "id2 alone: candidates and background": alone,
        "candidates of both rankings, background fused": union(shipped, alone),
        "candidates of both rankings, background by id2 alone": union(alone, shipped),
        **{
            f"id2's 20 + the fused top {n}, background by id2 alone": union(alone, with_candidates(alone, SHIPPED, n))
            for n in (1, 3, 5)
        },
        **{
            f"id2's 20 + the fused top {n}, background fused": union(
                with_background(alone, SHIPPED), with_candidates(alone, SHIPPED, n)
            )
            for n in (1, 3)
        },
    }
    runs = {name: [decide(p, feature_rows(p, VARIANTS[0]), seed) for seed in SEEDS] for name, p in problems.items()}
    shipped_rule = problems["id2's 20 + the fused top 1, background by id2 alone"]
    runs["as (g), the window floor bounding the second look to 30% of unrelated queries (shipped)"] = [
        decide(shipped_rule, feature_rows(shipped_rule, VARIANTS[0]), seed, WINDOW_BUDGET) for seed in SEEDS
    ]
    labels, legend = row_labels(runs)
    lines = [
        *report_header(
            "Candidates or background: what id2 alone changes for the re-posed edits",
            t0,
        ),
        "",
        legend,
        "",
        *seed_table(runs, next(iter(runs)), None, labels),
        "",
        *family_table(runs, query_families(im), labels),
    ]
    write_report("\n".join(lines) + "\n", args.md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
