"""Tables shared by the issue-24 benchmarks that run the decision harness of ``reference_crops.py`` over
every fold seed: per set, per family of edits, and the paired differences between rows.

``runs`` maps a row's name to one :func:`reference_crops.decide` result per seed (``match`` and ``correct`` per
query row, the edits first, then the negatives).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from reference_crops import DATA, SEEDS, SETS, Images

#: the manifests' family (or, for -dev which has none, source) in a few words
SHORT_FAMILY = {
    "one-step text-conditioned image translation (SD-Turbo)": "train: one-step translation (SD-Turbo)",
    "mask-based inpainting / local blending": "train: mask-based inpainting",
    "instruction-based (image-conditioned editor model)": "train: instruction-based",
    "flux-kontext (yetter)": "dev: FLUX.1 Kontext",
    "mgie (ml-mgie)": "dev: MGIE",
    "sd img2img (CompVis)": "dev: SD img2img (SDEdit-style)",
    "pose/content-changing text edit (Imagic)": "hard: Imagic (inversion, pose/content)",
}


def query_families(im: Images) -> np.ndarray:
    """Per query of ``im`` (in its order: ``SETS``, then the manifest's lines), its family in a few words."""
    out = []
    for name in SETS:
        for line in open(DATA / f"real-edits-{name}" / "pairs.jsonl", encoding="utf-8"):
            d = json.loads(line)
            label = str(d.get("family") or d.get("source") or "unknown")
            out.append(SHORT_FAMILY.get(label, f"{name}: {label}"))
    if len(out) != len(im.queries):
        raise ValueError(f"{len(out)} manifest lines for {len(im.queries)} queries")
    return np.array(out)


def span(xs: list[float], sign: str = "") -> str:
    """Mean (min to max)."""
    return f"{np.mean(xs):{sign}.3f} ({min(xs):{sign}.3f} to {max(xs):{sign}.3f})"


def row_labels(runs: dict[str, list[dict]]) -> tuple[dict[str, str], str]:
    """Each row's letter ((a), (b), ... in order) and the report's line that names them."""
    labels = {name: f"({chr(97 + i)})" for i, name in enumerate(runs)}
    return labels, "Rows: " + "; ".join(f"{labels[n]} {n}" for n in runs) + "."


def seed_table(runs: dict[str, list[dict]], base: str, control: str | None, labels: dict[str, str]) -> list[str]:
    """Per row: top-1 / MATCH per set (means over the seeds), the hard MATCH range, the paired hard differences
    to ``base`` and ``control`` (named by ``labels``), and the false matches summed over the seeds."""
    n = len(next(iter(runs.values())))
    head = f"| features | {' | '.join(f'{s} top-1 / MATCH' for s in SETS)} | hard MATCH | hard minus {labels[base]}"
    head += f" | hard minus {labels[control]}" if control else ""
    lines = [
        f"Cells: means over fold seeds {SEEDS[0]}-{SEEDS[-1]} of top-1 (the decision's best candidate is an origin or "
        "its twin) / MATCH (top-1 right and at or above the held-out operating point); hard MATCH: mean (lowest to "
        "highest seed); hard minus: the paired difference per seed, mean (lowest to highest); threshold: the "
        "operating point's decision score, mean over the seeds; false: negatives "
        f"at or above the operating point, summed over the {n} seeds (unrelated / held-out photos).",
        "",
        head + " | threshold | false |",
        "|---|" + "---:|" * (len(SETS) + 4 + bool(control)),
    ]
    for name, rs in runs.items():
        cells = [f"{np.mean([r[s][0] for r in rs]):.3f} / {np.mean([r[s][1] for r in rs]):.3f}" for s in SETS]
        cells.append(span([r["hard"][1] for r in rs]))
        for other in [base] + ([control] if control else []):
            cells.append(span([r["hard"][1] - o["hard"][1] for r, o in zip(rs, runs[other])], "+"))
        false = sum(r["unrelated"][0] for r in rs), sum(r["photo"][0] for r in rs)
        thr = np.mean([r["threshold"] for r in rs])
        lines.append(f"| {name} | {' | '.join(cells)} | {thr:.3f} | {false[0]} / {false[1]} |")
    return lines


def family_table(runs: dict[str, list[dict]], families: np.ndarray, labels: dict[str, str]) -> list[str]:
    """Per family of edits: each row's top-1 / MATCH, means over the seeds; ``labels`` names the columns."""
    lines = [
        f"Cells: top-1 / MATCH per family, means over fold seeds {SEEDS[0]}-{SEEDS[-1]}.",
        "",
        f"| family (edits) | {' | '.join(labels[name] for name in runs)} |",
        "|---|" + "---:|" * len(runs),
    ]
    for fam in dict.fromkeys(families):
        sel = np.flatnonzero(families == fam)
        cells = []
        for rs in runs.values():
            top1 = np.mean([r["correct"][sel].mean() for r in rs])
            match = np.mean([r["match"][sel].mean() for r in rs])
            cells.append(f"{top1:.3f} / {match:.3f}")
        lines.append(f"| {fam} ({len(sel)}) | {' | '.join(cells)} |")
    return lines


def report_header(title: str, started: float) -> list[str]:
    """A report's first lines: its title, the command that made it (this script and its arguments) and the
    machine it ran on, with the wall time since ``started``."""
    import sys
    import time

    command = f"PYTHONPATH=. python benchmarks/{Path(sys.argv[0]).name} " + " ".join(sys.argv[1:])
    return [f"# {title}", "", f"Command: `{command}`  ", machine_line(time.time() - started)]


def machine_line(wall: float) -> str:
    import os
    import platform

    return (
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs (shared), load average {os.getloadavg()[0]:.1f} at "
        f"the end; wall time {wall:.0f} s"
    )


def write_report(text: str, md: Path | None) -> None:
    print(text)
    if md:
        md.write_text(text, encoding="utf-8")
