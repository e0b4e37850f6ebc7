"""The built-in ``evaluate`` command: retrieval metrics and decisions of id2 and its baselines on a pairs set."""

from __future__ import annotations

import sys
from typing import Any

import click

from ..cli_support import (
    cache_option,
    config_from_flags,
    config_option_flags,
    distractors_option,
    echo_json,
    handle_errors,
    negatives_option,
    outcome_code,
    pairs_option,
    per_query_option,
    report_problems,
)
from ..decision_metrics import DecisionMetrics, format_decisions
from ..evaluate import METHOD_NAMES
from ..evaluation_run import EvaluationRun, run_evaluation
from ..hookspecs import hookimpl
from ..metrics import DEFAULT_K, format_table


def format_group_table(table: dict[str, dict[str, Any]]) -> str:
    """Rows = group labels, columns = methods, cells ``top1 / mAP``."""
    methods = list(next(iter(table.values())))
    header = ["group", "n", *methods]
    rows = [
        [
            label[:60],
            str(next(iter(ms.values())).n_positive_queries),
            *(f"{ms[m].top1:.3f} / {ms[m].mAP:.3f}" for m in methods),
        ]
        for label, ms in table.items()
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        for r in [header, *rows]
    )


@click.command("evaluate")
@pairs_option("Pairs manifest (JSONL {query, origin[, twins]}): its queries are the queries, its origins references.")
@distractors_option("Extra reference images")
@click.option(
    "--max-distractors",
    type=click.IntRange(min=0),
    default=None,
    help="Use at most N distractors (the first N, folders in sorted order).",
)
@negatives_option(
    "Unrelated queries with no origin among the references: they enter micro-AP and recall at precision, "
    "and the false matches at the threshold"
)
@click.option(
    "--k",
    "eval_k",
    type=int,
    default=DEFAULT_K,
    show_default=True,
    help="Predictions kept per query for micro-AP, mAP and recall@precision.",
)
@click.option(
    "--method",
    "method_names",
    multiple=True,
    type=click.Choice(METHOD_NAMES),
    help="Evaluate only these methods (repeatable; default: all available).",
)
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON object.")
@per_query_option("query and method")
@cache_option
@config_option_flags
@click.pass_context
@handle_errors
def evaluate_command(
    ctx: click.Context,
    pairs_paths: tuple[str, ...],
    distractors: tuple[str, ...],
    max_distractors: int | None,
    negative_dirs: tuple[str, ...],
    eval_k: int,
    method_names: tuple[str, ...],
    as_json: bool,
    per_query_path: str | None,
    **flags: Any,
) -> None:
    """Retrieval metrics (top-1, mAP, micro-AP, recall at 90%/99.9% precision) of id2 and baselines, and the
    decisions at the configured threshold (MATCH with the right origin; false matches of --negatives).

    id2 is evaluated when a W is configured (or shipped); vae_raw, pdq and phash always. Exit 4 when
    some image could not be read or some path under --distractors or --negatives could not be walked (an
    unreadable folder, a dangling link, a symlink loop): each is reported and skipped, the rest evaluated.
    """
    cfg = config_from_flags(ctx, **flags)
    run = run_evaluation(
        cfg,
        list(pairs_paths),
        distractors=distractors,
        max_distractors=max_distractors,
        negatives=negative_dirs,
        k=eval_k,
        methods=method_names,
        per_query=per_query_path,
        report=lambda line: report_problems([line]),
        progress=True,
    )
    if as_json:
        echo_json(run.to_dict())
    else:
        _print_evaluation(run)
        _print_decisions(run.decisions)
    sys.exit(outcome_code(unreadable=run.skipped))


def _print_decisions(decisions: dict[str, Any]) -> None:
    def metrics(d: dict[str, Any]) -> DecisionMetrics:
        return DecisionMetrics(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    click.echo("\ndecisions (what a deployment reports):")
    for name, d in decisions.items():
        if " per " not in name:
            click.echo("  " + format_decisions(name, metrics(d)))
    for name, table in decisions.items():
        if " per " in name and len(table) > 1:
            click.echo(f"  {name} (MATCH with the right origin):")
            for label, d in table.items():
                click.echo(f"    {label[:60]:60s} {d['matched']:4d}/{d['n_edits']:<4d} = {d['recall']:.3f}")


def _print_evaluation(run: EvaluationRun) -> None:
    click.echo(
        f"{run.n_queries} queries, {run.n_references} references ({run.n_origins} origins), "
        f"k={run.k}, default method {run.default} ({run.embedder}), query windows {run.windows}"
    )
    click.echo(format_table(run.methods))
    for name, n_bits in run.bits.items():
        b = run.hamming_thresholds(name)
        shown = [
            f"{label} distance <= {b[key]}"
            for label, key in (("thr@P90", "threshold_at_p90_bits"), ("thr@P99.9", "threshold_at_p999_bits"))
            if b[key] is not None
        ]
        if shown:
            click.echo(f"{name} thresholds in Hamming bits of {n_bits} (HMA units): {'; '.join(shown)}")
    for key, table in run.by_group.items():
        if len(table) > 1:
            click.echo(f"\nper {key} (top1 / mAP):")
            click.echo(format_group_table(table))
    if run.per_query:
        click.echo(f"per-query records in {run.per_query}")


@hookimpl
def id2_register_commands(cli: click.Group) -> None:
    cli.add_command(evaluate_command)
