"""The decision's cost on the common path: unrelated queries (and, beside them, real edits) through `query`.

    python benchmarks/decision_windows.py --md benchmarks/results/decision_windows.md

One store of real photos plus the origins of the real edits; the same queries, in one process, through three
configurations of the identify path: the shipped default (decision model, windows searched only between its
floor and its threshold), the decision model with windows off, and the previous default (the fused cosine at
0.5, windows on every query under it). Reported per configuration and query kind: the share reported as a MATCH
(with the right origin, for edits), the share that took the second look, and the process CPU seconds per query
(user + system, from ``time.process_time``: the machine is shared, so wall time is noisier). Nothing is written
but the report; the store lives in a temporary folder that is removed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from _output import emit  # noqa: E402

from id2_plugin.config import load_config  # noqa: E402
from id2_plugin.pipeline import Pipeline  # noqa: E402

SHARED = Path(os.environ.get("ID2_SHARED_DIR", ROOT.parent / "shared"))
CONFIGS = {
    "decision, windows auto (default)": {},
    "decision, windows off": {"match": {"windows": "off"}},
    "cosine 0.5, windows auto (before)": {"match": {"decision": "cosine", "threshold": 0.5}},
}


def _queries(n_unrelated: int, n_edits: int) -> tuple[list[Path], dict[Path, Path], list[Path]]:
    unrelated = sorted((SHARED / "data" / "unrelated").glob("*.jpg"))[::7][:n_unrelated]
    truth: dict[Path, Path] = {}
    for name in ("real-edits-hard", "real-edits-dev"):
        base = SHARED / "data" / name
        lines = [json.loads(x) for x in (base / "pairs.jsonl").read_text().splitlines()]
        for d in lines[:: max(1, len(lines) // (n_edits // 2))][: n_edits // 2]:
            truth[(base / d["query"]).resolve()] = (base / d["origin"]).resolve()
    return unrelated, truth, sorted({o for o in truth.values()})


def _run(store: Path, overrides: dict, queries: list[Path], truth: dict[Path, Path]) -> dict[str, dict[str, float]]:
    cfg = load_config(None, {"store": {"path": str(store)}, **overrides})
    with Pipeline.from_config(cfg) as pipeline:
        pipeline.identify_many(queries[:2])  # warm-up: models loaded, first batches out of the timing
        t0 = time.process_time()
        reports = pipeline.identify_many(queries)
        cpu = time.process_time() - t0
    rows: dict[str, dict[str, float]] = {}
    for kind in ("unrelated", "edits"):
        picked = [(q, r) for q, r in zip(queries, reports) if (q in truth) == (kind == "edits")]
        matched = sum(r.is_match and (kind == "unrelated" or Path(r.best.uri).resolve() == truth[q]) for q, r in picked)
        looked = sum("windows" in r.timings_ms for _, r in picked)
        rows[kind] = {"n": len(picked), "match": matched / len(picked), "second_look": looked / len(picked)}
    rows["all"] = {"cpu_s_per_query": cpu / len(queries)}
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=300, help="Photos in the store besides the origins.")
    ap.add_argument("--unrelated", type=int, default=40)
    ap.add_argument("--edits", type=int, default=24)
    ap.add_argument("--md", type=Path, default=None)
    args = ap.parse_args()
    unrelated, truth, origins = _queries(args.unrelated, args.edits)
    photos = sorted((SHARED / "data" / "photos").glob("*.jpg"))[: args.photos]
    queries = [*unrelated, *truth]
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        cfg = load_config(None, {"store": {"path": str(store)}})
        with Pipeline.from_config(cfg, create_store=True) as pipeline:
            pipeline.add_files([*photos, *origins])
        results = {name: _run(store, overrides, queries, truth) for name, overrides in CONFIGS.items()}
    lines = [
        f"# Decision and query windows on the common path ({len(photos) + len(origins)} references)",
        "",
        f"`python benchmarks/decision_windows.py --photos {args.photos} --unrelated {args.unrelated} "
        f"--edits {args.edits}` on {platform.machine()}, {os.cpu_count()} cores; one process, same queries.",
        "",
        "| configuration | unrelated: false MATCH | unrelated: second look | edits: MATCH, right origin | "
        "edits: second look | CPU s / query |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        u, e = r["unrelated"], r["edits"]
        lines.append(
            f"| {name} | {u['match']:.3f} ({u['n']}) | {u['second_look']:.2f} | {e['match']:.3f} ({e['n']}) | "
            f"{e['second_look']:.2f} | {r['all']['cpu_s_per_query']:.2f} |"
        )
    base = results["cosine 0.5, windows auto (before)"]["all"]["cpu_s_per_query"]
    now = results["decision, windows auto (default)"]["all"]["cpu_s_per_query"]
    lines += ["", f"CPU per query, default / before: {now / base:.2f}x."]
    emit(lines, args.md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
