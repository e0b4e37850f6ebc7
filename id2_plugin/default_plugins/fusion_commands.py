"""Built-in command ``fit-fusion``: choose the weights of the ``fused`` embedder on real edit pairs."""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click
import numpy as np

from ..assembly import build_signals
from ..cli_support import (
    config_from_flags,
    config_option_flags,
    distractors_option,
    echo_json,
    handle_errors,
    outcome_code,
    pairs_option,
)
from ..embedders.fused import FusedEmbedder, FusionFit
from ..errors import ConfigError
from ..eval_sets import load_pairs_for_eval, prepare_eval_set
from ..evaluate import EmbedderMethod, embed_images
from ..fusion import fit_fusion
from ..hookspecs import hookimpl
from ..pairs import manifest_digest
from ..train.crossval import grouped_folds, origin_groups

#: SSCD cosine at or above which two origins count as one photo for the folds (copies score above 0.75,
#: unrelated photos of the shared set below 0.35)
SAME_PHOTO_SSCD = 0.5


@click.command("fit-fusion")
@pairs_option("Real edit pairs (JSONL {query, origin}).")
@distractors_option("References without queries, the negatives every query must rank below its origin")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="Fusion fit JSON to write.")
@click.option("--step", type=float, default=0.05, show_default=True, help="Grid step of the weights.")
@click.option(
    "--folds", "n_folds", type=int, default=5, show_default=True, help="Grouped cross-validation folds (0 = none)."
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@config_option_flags
@click.pass_context
@handle_errors
def fit_fusion_command(
    ctx: click.Context,
    pairs_paths: tuple[str, ...],
    distractors: tuple[str, ...],
    out_path: str,
    step: float,
    n_folds: int,
    seed: int,
    as_json: bool,
    **flags: Any,
) -> None:
    """Fit the per-signal weights of the fused embedder (its embedder.signals: id2 and sscd unless
    configured otherwise, plugins' signals included) and write them with their provenance.

    Every query is ranked among all origins and distractors; the weights maximise top-1 + mAP (micro-AP
    breaks ties). Grouped cross-validation (folds never split a photo) reports the held-out scores of the
    fit beside each signal alone. Use the result with `--set embedder.fusion=OUT`.
    """
    if not 0.0 < step <= 0.5:
        raise ConfigError(f"--step must be in (0, 0.5], got {step}")
    cfg = config_from_flags(ctx, **flags)
    parts = build_signals(cfg.embedder)
    normaliser = FusedEmbedder(parts, FusionFit({p.name: 1.0 for p in parts}), resize_policy=cfg.embedder.resize_policy)
    query_paths, ref_paths, positives = load_pairs_for_eval(list(pairs_paths), distractors)
    data = prepare_eval_set(query_paths, ref_paths, positives, normaliser.normalise)
    for line in data.skipped:
        click.echo(line, err=True)
    if not data.positives.any():
        raise ConfigError("no readable query with a readable origin")
    descs = {}
    for p in parts:
        m = EmbedderMethod(p, None, p.name)
        descs[p.name] = (
            embed_images(m, data.queries, progress=f"{p.name}: queries"),
            embed_images(m, data.references, progress=f"{p.name}: references"),
        )
    sims = {name: q @ r.T for name, (q, r) in descs.items()}
    folds = _photo_folds(descs, data.positives, n_folds, seed) if n_folds else None
    report = fit_fusion(sims, data.positives, folds=folds, step=step)
    provenance = {
        "signals": {p.name: p.identity for p in parts},
        "data": {
            "pairs": {str(Path(p).resolve()): manifest_digest(p) for p in pairs_paths},
            "distractors": [str(Path(d).resolve()) for d in distractors],
            "n_queries": len(data.queries),
            "n_references": len(data.references),
        },
        "objective": "top1 + mAP (micro-AP breaks ties), grid step %g" % step,
        "cross_validated": report.cross_validated,
        "fold_weights": report.fold_weights,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["id2-plugin fit-fusion", *sys.argv[2:]]),
    }
    fit = FusionFit(report.weights, provenance)
    path = fit.save(out_path)
    if as_json:
        echo_json(dict(report.to_dict(), out=str(path), skipped=data.skipped))
    else:
        click.echo(f"weights {', '.join(f'{n} {w:.2f}' for n, w in fit.weights.items())} -> {path}")
        for name, m in report.cross_validated.items():
            scores = f"top1 {m['top1']:.3f}  mAP {m['mAP']:.3f}  micro-AP {m['micro_ap']:.3f}"
            click.echo(f"  held-out ({n_folds} grouped folds) {name:6s} {scores}")
        click.echo(f"use it with: id2-plugin --set embedder.fusion={path} ...")
    sys.exit(outcome_code(unreadable=data.skipped))


def _photo_folds(
    descs: dict[str, tuple[np.ndarray, np.ndarray]], positives: np.ndarray, n_folds: int, seed: int
) -> np.ndarray:
    """Grouped folds of the queries: origins alike under SSCD (or the first signal) are one photo, never split."""
    origin_col = positives.argmax(axis=1)
    refs = descs["sscd"][1] if "sscd" in descs else next(iter(descs.values()))[1]
    used = sorted(set(origin_col.tolist()))
    group_of = dict(zip(used, origin_groups(refs[used], SAME_PHOTO_SSCD).tolist()))
    return grouped_folds([group_of[c] for c in origin_col], n_folds, seed=seed)


@hookimpl
def id2_register_commands(cli: click.Group) -> None:
    cli.add_command(fit_fusion_command)
