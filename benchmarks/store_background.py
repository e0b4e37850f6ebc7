"""Store-side evidence for the decision (issues 23 and 24): does the reference's own background, or the gap to
the query's next candidate, separate hard edits from unrelated photos better than the shipped features?

    PYTHONPATH=. python benchmarks/store_background.py --cache /tmp/i24 --md benchmarks/results/store_background.md

The shipped decision subtracts the QUERY's background (the median cosine of its 20 store candidates) from each
signal's cosine. Unrelated portraits still score high against portrait references: the hubness of a reference
(how alike it is to everything of its kind) is not removed by the query's side alone. Cross-domain similarity
local scaling (CSLS, Conneau et al. 2018) subtracts both sides; here the reference's side is the median cosine
of the reference to its 20 nearest OTHER references in the store (computable at indexing time, one number per
signal per reference, nothing image-like). Rows, each a logistic model fitted and scored exactly as the shipped
one (``fit-decision``'s protocol, the harness of ``benchmarks/reference_crops.py``: grouped 5-fold held-out
scores, ``match.windows: auto``, operating point at <= 0.5% false matches per negative, 95% one-sided bound):

(a) the shipped features; (b) CSLS: both backgrounds subtracted; (c) the shipped features plus the reference's
backgrounds as two more features; (d) the shipped features plus the gap between the candidate's fused cosine and
the best other candidate's of the same query (a true origin stands out from the rest; an unrelated query's
candidates bunch); (e) (c) and (d) together; (p) control: (c) with the reference backgrounds shuffled among the
references (a third and fourth feature add capacity whether or not they carry information).

Embedding is shared with ``reference_crops.py`` (same ``--cache`` names: whole id2 + SSCD vectors, query windows;
never images or latents); the reference crops are not needed here.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_crops import (  # noqa: E402
    SEEDS,
    SETS,
    TOP,
    Embeddings,
    Problem,
    _vectors,
    build_problem,
    decide,
    load_images,
)

from id2_plugin.decision import DEFAULT_FEATURES, feature_matrix  # noqa: E402


@dataclass(frozen=True)
class Row:
    name: str
    csls: bool = False
    reference_background: bool = False
    gap: bool = False
    shuffled: bool = False


ROWS = [
    Row("(a) shipped: id2, SSCD window, each over the query's background"),
    Row("(b) CSLS: each over the query's AND the reference's background", csls=True),
    Row("(c) (a) + the reference's backgrounds as features", reference_background=True),
    Row("(d) (a) + gap to the query's next candidate", gap=True),
    Row("(e) (c) + (d)", reference_background=True, gap=True),
    Row("(p) control: (c) with the reference backgrounds shuffled", reference_background=True, shuffled=True),
]


def reference_backgrounds(p: Problem, weights: dict[str, float]) -> dict[str, np.ndarray]:
    """Per signal, each reference's median cosine to its ``TOP`` nearest other references (by the fused cosine)."""
    refs = p.im.references
    sims = {n: p.vectors[n][refs] @ p.vectors[n][refs].T for n in ("id2", "sscd")}
    fused = sum(weights[n] * sims[n] for n in sims)
    np.fill_diagonal(fused, -np.inf)
    top = np.argsort(-fused, axis=1, kind="stable")[:, :TOP]
    return {n: np.median(np.take_along_axis(s, top, axis=1), axis=1) for n, s in sims.items()}


def next_candidate_gap(p: Problem, weights: dict[str, float]) -> np.ndarray:
    """Per candidate row: its fused cosine minus the best fused cosine among the query's other top candidates."""
    fused = sum(weights[n] * p.sims[n] for n in ("id2", "sscd"))
    top = np.take_along_axis(fused, p.top, axis=1)
    q, r = p.cands.query, p.cands.reference
    row = fused[q, r]
    first_is_self = p.top[q, 0] == r
    best_other = np.where(first_is_self, top[q, 1], top[q, 0])
    return row - best_other


def feature_rows(p: Problem, row: Row, bgr: dict[str, np.ndarray], gap: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per candidate row, the features without the query windows and with them."""
    r = p.cands.reference
    if row.shuffled:
        perm = np.random.default_rng(0).permutation(len(p.im.references))
        bgr = {n: b[perm] for n, b in bgr.items()}
    out = []
    for cands in (replace(p.cands, window=None), p.cands):
        if row.csls:
            background = {n: cands.background[n] + bgr[n][r] for n in cands.background}
            cands = replace(cands, background=background)
        x = feature_matrix(cands.evidence(), DEFAULT_FEATURES)
        extra = []
        if row.reference_background:
            extra += [bgr["id2"][r], bgr["sscd"][r]]
        if row.gap:
            extra.append(gap)
        out.append(np.hstack([x, np.stack(extra, axis=1)]) if extra else x)
    return tuple(out)


def table(runs: dict[str, list[dict]], p: Problem) -> list[str]:
    n = {s: int((p.sets == s).sum()) for s in SETS}
    negs = {k: int((p.negative & (p.sets == k)).sum()) for k in ("unrelated", "photo")}
    head = " | ".join(f"{s} ({n[s]}) top-1 / MATCH" for s in SETS)
    lines = [
        f"Cells: mean over fold seeds {SEEDS[0]}-{SEEDS[-1]} (top-1 = the decision's best candidate is right; MATCH = "
        "right and at or above the held-out operating point); false = negatives at or above it, summed over seeds "
        f"(of {len(SEEDS)} x {negs['unrelated']} unrelated, {len(SEEDS)} x {negs['photo']} held-out photos); "
        "hard MATCH range = lowest-highest seed.",
        "",
        f"| features | {head} | hard MATCH range | false (unrelated / photos) |",
        "|---|" + "---:|" * (len(SETS) + 2),
    ]
    for name, seeds in runs.items():
        cells = [f"{np.mean([s[k][0] for s in seeds]):.3f} / {np.mean([s[k][1] for s in seeds]):.3f}" for k in SETS]
        hard = [s["hard"][1] for s in seeds]
        false = [sum(s[k][0] for s in seeds) for k in ("unrelated", "photo")]
        lines.append(f"| {name} | {' | '.join(cells)} | {min(hard):.3f}-{max(hard):.3f} | {false[0]} / {false[1]} |")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, help="folder for the SSCD and id2 vectors (nothing is cached without it)")
    ap.add_argument("--md", type=Path, help="write the report here (it is printed either way)")
    args = ap.parse_args()
    t0 = time.time()
    im, emb = load_images(), Embeddings()
    asking = np.concatenate([im.queries, im.negatives])
    whole = _vectors(args.cache, "whole_id2_sscd", im.paths, emb.whole)
    d = emb.id2.dim
    vectors = dict(
        id2=whole[:, :d],
        sscd=whole[:, d:],
        windows=_vectors(args.cache, "query_windows", [im.paths[i] for i in asking], emb.windows),
    )
    weights = emb.fused.weights
    p = build_problem(im, vectors, weights)
    bgr, gap = reference_backgrounds(p, weights), next_candidate_gap(p, weights)
    runs = {row.name: [decide(p, feature_rows(p, row, bgr, gap), seed) for seed in SEEDS] for row in ROWS}
    command = "PYTHONPATH=. python benchmarks/store_background.py " + " ".join(sys.argv[1:])
    text = "\n".join(
        [
            f"# Store-side evidence for the decision ({len(im.queries)} edits, {int(p.negative.sum())} negatives, "
            f"{len(im.references)} references)",
            "",
            f"Command: `{command}`  ",
            f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end; "
            f"wall time {time.time() - t0:.0f} s (most of it embedding when the cache is cold)",
            "",
            *table(runs, p),
        ]
    )
    print(text)
    if args.md:
        args.md.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
