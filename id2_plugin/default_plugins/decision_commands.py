"""Built-in command ``fit-decision``: fit the decision model and its operating point on real edits and
unrelated photos, with grouped cross-validation."""

from __future__ import annotations

import dataclasses
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from ..cli_support import (
    config_from_flags,
    config_option_flags,
    distractors_option,
    echo_json,
    handle_errors,
    negatives_option,
    outcome_code,
    pairs_option,
    scan_inputs,
)
from ..decision import DEFAULT_FEATURES, DEFAULT_RANKINGS, FEATURES, ROUTE_FEATURE, DecisionModel, parse_rankings
from ..decision_fit import WINDOW_BUDGET
from ..hookspecs import hookimpl


@click.command("fit-decision")
@pairs_option("Real edit pairs (JSONL {query, origin[, twins]}).")
@negatives_option("Unrelated images, queries that must not match", required=True)
@distractors_option("References without queries besides the pairs' origins")
@click.option(
    "--holdout-distractors",
    "holdout_every",
    type=click.IntRange(min=0),
    default=4,
    show_default=True,
    help="Every N-th distractor becomes an unrelated query instead of a reference (0: none).",
)
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="Decision model JSON to write.")
@click.option(
    "--target-fpr",
    type=float,
    default=0.002,
    show_default=True,
    help="False-match rate per unrelated query the operating point must bound (95% one-sided).",
)
@click.option("--confidence", type=float, default=0.95, show_default=True)
@click.option(
    "--feature",
    "features",
    multiple=True,
    default=DEFAULT_FEATURES,
    show_default=True,
    help="Features of the model (repeatable).",
)
@click.option(
    "--candidates",
    "rankings",
    multiple=True,
    default=[f"{r}:{n}" for r, n in DEFAULT_RANKINGS],
    show_default=True,
    help="Where each query's candidates come from, RANKING:N (repeatable, in order): the top N by 'fused' "
    "(the store's cosine) or by one signal's cosine alone; the first ranking's candidates set the background.",
)
@click.option(
    "--window-budget",
    type=click.FloatRange(0.0, 1.0),
    default=WINDOW_BUDGET,
    show_default=True,
    help="At most this share of unrelated queries takes the query windows' second look: the window floor is "
    "raised to it when the windows lifted some edit from lower (those edits are then lost; 1: no bound).",
)
@click.option(
    "--route",
    type=click.Choice([*FEATURES, "none"]),
    default=ROUTE_FEATURE,
    show_default=True,
    help="Feature of a second way to a MATCH: a candidate whose value of it is above every negative's matches "
    "too ('none': the logistic score alone).",
)
@click.option(
    "--folds",
    "n_folds",
    type=click.IntRange(min=2),
    default=5,
    show_default=True,
    help="Grouped cross-validation folds.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@config_option_flags
@click.pass_context
@handle_errors
def fit_decision_command(
    ctx: click.Context,
    pairs_paths: tuple[str, ...],
    negative_dirs: tuple[str, ...],
    distractors: tuple[str, ...],
    holdout_every: int,
    out_path: str,
    target_fpr: float,
    confidence: float,
    features: tuple[str, ...],
    rankings: tuple[str, ...],
    window_budget: float,
    route: str,
    n_folds: int,
    seed: int,
    as_json: bool,
    **flags: Any,
) -> None:
    """Fit the decision model of the configured (multi-signal) embedder and choose its operating point.

    Every edit and every negative is searched among the origins and distractors; its candidates (the top
    references of each --candidates ranking) become training rows. The threshold is the lowest whose one-sided
    Clopper-Pearson bound on the false-match rate of the negatives' held-out scores is at most --target-fpr;
    the windows' floor is where the second look never changed a held-out decision. Use the result with
    `--set match.decision=OUT`. Exit 4 (after writing it) when some image could not be read.
    """
    from ..decision_data import fit_decision_files

    cfg = config_from_flags(ctx, **flags)
    negative_files, skipped = scan_inputs(negative_dirs)
    distractor_files, problems = scan_inputs(distractors)
    skipped += problems
    fit, report = fit_decision_files(
        cfg,
        list(pairs_paths),
        negative_files,
        distractor_files,
        features=list(features),
        target_fpr=target_fpr,
        confidence=confidence,
        n_folds=n_folds,
        seed=seed,
        holdout_every=holdout_every,
        rankings=parse_rankings(rankings),
        window_budget=window_budget,
        route=None if route == "none" else route,
    )
    skipped += report.pop("skipped")
    model: DecisionModel = fit.model
    model = dataclasses.replace(
        model,
        provenance={
            **model.provenance,
            "pairs": [str(Path(p).resolve()) for p in pairs_paths],
            "negatives": [str(Path(d).resolve()) for d in negative_dirs],
            "distractors": [str(Path(d).resolve()) for d in distractors],
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": "id2-plugin fit-decision " + " ".join(sys.argv[2:]),
        },
    )
    path = model.save(out_path)
    if as_json:
        echo_json(dict(report, out=str(path), skipped=skipped))
    else:
        _print_report(model, report, path)
    sys.exit(outcome_code(unreadable=skipped))


def _print_report(model: DecisionModel, report: dict[str, Any], path: Path) -> None:
    op = model.operating_point
    assert op is not None
    ranked = ", ".join(f"top {n} by {r}" for r, n in model.candidates)
    click.echo(f"decision model ({', '.join(model.features)}; candidates: {ranked}) -> {path}")
    click.echo(
        f"  operating point: threshold {op.threshold:.4f}; held-out false matches {op.false_matches} of "
        f"{op.n_negatives} negatives (95% bound {op.fpr_upper_bound:.4f} per query at {op.n_references} "
        f"references, {op.pair_fpr_upper_bound:.2e} per pair); windows searched from {op.window_floor:.4f}"
    )
    if model.route is not None:
        click.echo(f"  second way to a MATCH: {model.route.feature} above {model.route.floor:.4f} (every negative's)")
    click.echo(
        "  held-out (grouped folds), MATCH with the right origin at the threshold, beside the fused cosine "
        "at a threshold chosen the same way:"
    )
    for label, row in report["per_set"].items():
        click.echo(
            f"    {label[:50]:50s} n={row['n']:4d}  top1 {row['top1']:.3f}  MATCH {row['match']:.3f}  "
            f"(cosine: top1 {row['cosine_top1']:.3f} MATCH {row['cosine_match']:.3f})"
        )
    for label, row in report["negatives"].items():
        click.echo(
            f"    negatives {label[:40]:40s} n={row['n']:4d}  false matches {row['false']} "
            f"(cosine: {row['cosine_false']})"
        )
    click.echo(f"use it with: id2-plugin --set match.decision={path} ...")


@hookimpl
def id2_register_commands(cli: click.Group) -> None:
    cli.add_command(fit_decision_command)


__all__ = ["fit_decision_command"]
