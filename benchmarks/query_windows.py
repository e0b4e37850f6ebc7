"""Query windows (``match.windows``) on the real edits: the fused default with and without the second look.

    python benchmarks/query_windows.py --md benchmarks/results/query_windows.md \
        --json benchmarks/results/query_windows.json

One run, the same queries and references for every row: the real-edits-train and real-edits-dev queries,
ranked among all their origins plus the shared photos (as ``fit-fusion`` pools them). Rows: the whole image
only (``off``), the second look below ``match.threshold`` (``auto``, the default) and on every query
(``always``), with SSCD re-embedding the windows (the shipped design) and, for comparison, every signal
re-embedding them. Reported per set and per source: top-1 / mAP / micro-AP, the share of queries that got
a second look, and the embedding time per windowed query. Nothing is written but the report.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from id2_plugin.config import load_config
from id2_plugin.eval_sets import load_pairs_for_eval, prepare_eval_set, query_labels
from id2_plugin.evaluate import EmbedderMethod, FusedMethod, embed_images, windowed_similarity
from id2_plugin.framing import query_windows
from id2_plugin.metrics import compute_metrics
from id2_plugin.pipeline import embedder_from_config

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("ID2_SHARED_DIR", ROOT.parent / "shared"))
MANIFESTS = [SHARED / "data" / "real-edits-train" / "pairs.jsonl", SHARED / "data" / "real-edits-dev" / "pairs.jsonl"]


class _AllSignals:
    """A fused embedder whose windows are seen by every signal (the comparison row)."""

    def __init__(self, fused) -> None:
        self.fused = fused

    def embed_windows(self, windows, whole):
        return self.fused.embed_arrays(windows)


def _metrics(sim, positives, rows):
    m = compute_metrics(sim[rows], positives[rows])
    return {"n": int(len(rows)), "top1": m.top1, "mAP": m.mAP, "micro_ap": m.micro_ap}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--md", type=Path)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    t_start = time.time()
    cfg = load_config(None)
    fused = embedder_from_config(cfg, in_memory_only=True)
    threshold = cfg.match.threshold
    qp, rp, pos = load_pairs_for_eval(MANIFESTS, [SHARED / "data" / "photos"])
    data = prepare_eval_set(qp, rp, pos, fused.normalise)
    parts = [EmbedderMethod(p, None, p.name) for p in fused.parts]
    method = FusedMethod(fused, parts)
    descs = [
        (
            embed_images(p, data.queries, progress=f"{p.name}: queries"),
            embed_images(p, data.references, progress=f"{p.name}: references"),
        )
        for p in parts
    ]
    qry, ref = method.combine([q for q, _ in descs]), method.combine([r for _, r in descs])
    whole = method.similarity(qry, ref)
    rows: dict[str, np.ndarray] = {}
    timing: dict[str, float] = {}
    for name, mode, m in (
        ("off", None, method),
        ("auto", "auto", method),
        ("always", "always", method),
        ("auto, every signal sees the windows", "auto", _wrap(method, fused)),
    ):
        t0 = time.perf_counter()
        rows[name] = whole if mode is None else windowed_similarity(m, data.queries, qry, ref, whole, mode, threshold)
        timing[name] = time.perf_counter() - t0
    second = np.flatnonzero(whole.max(axis=1) < threshold)
    sets = ["dev" if "real-edits-dev" in str(p) else "train" for p in data.query_paths]
    sources = query_labels(MANIFESTS, data.query_paths, "source")
    groups = {"all": np.arange(len(sets))}
    groups.update({f"set {s}": np.flatnonzero(np.array(sets) == s) for s in ("dev", "train")})
    groups.update(
        {f"source {s}": np.flatnonzero(np.array(sources, dtype=object) == s) for s in sorted({s for s in sources if s})}
    )
    report = {
        "command": "python benchmarks/query_windows.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end",
        "embedder": fused.identity,
        "threshold": threshold,
        "n_queries": len(data.queries),
        "n_references": len(data.references),
        "windows_per_query": len(query_windows(data.queries[0])[0]),
        "second_look_share": {g: float(np.isin(r, second).mean()) for g, r in groups.items()},
        "seconds_per_second_look": {
            n: (t / max(len(second), 1) if n != "off" and n != "always" else t / len(data.queries))
            for n, t in timing.items()
        },
        "rows": {n: {g: _metrics(s, data.positives, r) for g, r in groups.items()} for n, s in rows.items()},
        "wall_s": time.time() - t_start,
    }
    text = _markdown(report)
    print(text)
    if args.md:
        args.md.write_text(text + "\n", encoding="utf-8")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return 0


def _wrap(method, fused):
    m = FusedMethod(fused, method.part_methods)
    m.embedder = _AllSignals(fused)
    return m


def _markdown(rep: dict) -> str:
    modes = list(rep["rows"])
    groups = list(rep["rows"][modes[0]])
    lines = [
        f"# Query windows on the real edits ({rep['n_queries']} queries, {rep['n_references']} references)",
        "",
        f"Command: `{rep['command']}`  ",
        f"Machine: {rep['machine']}; wall time {rep['wall_s']:.0f} s  ",
        f"Embedder: `{rep['embedder']}`; match.threshold {rep['threshold']}; "
        f"{rep['windows_per_query']} windows per query",
        "",
        "Cells: top-1 / mAP / micro-AP; `auto` = the default; "
        "second look = share of the group's queries `auto` searched again.",
        "",
        "| queries | n | second look | " + " | ".join(f"`{m}`" if " " not in m else m for m in modes) + " |",
        "|---|---:|---:|" + "---:|" * len(modes),
    ]
    for g in groups:
        cells = [
            f"{rep['rows'][m][g]['top1']:.3f} / {rep['rows'][m][g]['mAP']:.3f} / {rep['rows'][m][g]['micro_ap']:.3f}"
            for m in modes
        ]
        lines.append(
            f"| {g} | {rep['rows'][modes[0]][g]['n']} | {rep['second_look_share'][g]:.2f} | " + " | ".join(cells) + " |"
        )
    lines += [
        "",
        "Seconds of window embedding per windowed query (under the load above): "
        + ", ".join(f"{n}: {v:.2f}" for n, v in rep["seconds_per_second_look"].items() if n != "off")
        + ".",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
