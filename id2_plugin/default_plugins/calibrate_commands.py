"""The built-in ``calibrate`` command: choose match.threshold for a target false-match rate or precision."""

from __future__ import annotations

import sys
from typing import Any

import click

from ..calibration_run import CalibrationRun, run_calibration
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
from ..hookspecs import hookimpl


@click.command("calibrate")
@pairs_option("Positives: pairs manifest (JSONL {query, origin}); each query is scored against its origin.")
@negatives_option("Images with NO origin among the references", required=True)
@distractors_option("Extra references besides the pairs' origins")
@click.option(
    "--target-fpr", type=float, default=None, help="Target false-match rate (default 1e-3 when no target is given)."
)
@click.option("--target-precision", type=float, default=None, help="Target precision instead of a false-match rate.")
@click.option(
    "--confidence",
    type=float,
    default=0.95,
    show_default=True,
    help="Confidence of the one-sided Clopper-Pearson bound.",
)
@click.option(
    "--out",
    "out_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="YAML config to write (match.threshold + calibration provenance).",
)
@click.option(
    "--plot", "plot_path", default=None, type=click.Path(dir_okay=False), help="Save a score histogram (PNG)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the calibration as one JSON object.")
@click.option(
    "--method",
    "method_name",
    type=click.Choice(["embedder", "pdq", "phash"]),
    default="embedder",
    show_default=True,
    help="Calibrate the configured embedder, or a PDQ / pHash threshold for another "
    "system (HMA): reported as a Hamming distance too, match.threshold left unset.",
)
@per_query_option("query and negative")
@cache_option
@config_option_flags
@click.pass_context
@handle_errors
def calibrate_command(
    ctx: click.Context,
    pairs_paths: tuple[str, ...],
    negative_dirs: tuple[str, ...],
    distractors: tuple[str, ...],
    target_fpr: float | None,
    target_precision: float | None,
    confidence: float,
    out_path: str,
    plot_path: str | None,
    as_json: bool,
    method_name: str,
    per_query_path: str | None,
    **flags: Any,
) -> None:
    """Choose match.threshold for a target false-match rate or precision, with a confidence bound.

    Negatives are scored against the reference set = the pairs' origins + --distractors, or, when
    --store is given, against that existing store (use the production store to calibrate for it).
    Negatives identical (same bytes) to a reference are dropped. Writes a config that
    `id2-plugin --config OUT query ...` loads. Exit 4 (after writing it) when some image could not be
    read or some path under --negatives / --distractors could not be walked; each is reported.
    """
    use_store = flags.get("store_path") is not None
    cfg = config_from_flags(ctx, **flags)
    run = run_calibration(
        cfg,
        list(pairs_paths),
        negative_dirs,
        distractors=distractors,
        against_store=use_store,
        target_fpr=target_fpr,
        target_precision=target_precision,
        confidence=confidence,
        method=method_name,
        out=out_path,
        plot=plot_path,
        per_query=per_query_path,
        report=lambda line: report_problems([line]),
        progress=True,
    )
    if as_json:
        echo_json(run.to_dict())
    else:
        _print_calibration(run)
    sys.exit(outcome_code(unreadable=run.skipped))


def _print_calibration(run: CalibrationRun) -> None:
    cal, bits = run.calibration, run.bits
    goal = f"false-match rate <= {cal.target_value:g}" if cal.target == "fpr" else f"precision >= {cal.target_value:g}"
    pct = f"{cal.confidence:.0%}"
    click.echo(f"threshold {cal.threshold:.6f} for {goal} at {pct} confidence ({run.method}, {run.identity})")
    if bits:
        click.echo(
            f"  as a Hamming distance (HMA units): match when distance <= {bits['threshold_bits']} "
            f"of {bits['n_bits']} bits"
        )
    click.echo(
        f"  negatives {cal.n_neg}: {cal.false_matches} false match(es), rate {cal.fpr:.4g}, "
        f"{pct} upper bound {cal.fpr_upper_bound:.4g}"
    )
    click.echo(
        f"  positives {cal.n_pos}: recall {cal.recall:.4f}; precision {cal.precision:.4f} "
        f"(conservative {cal.precision_lower_bound:.4f})"
    )
    click.echo(f"  references: {run.references}")
    use = f"; use it with: id2-plugin --config {run.out} query ..." if not bits else " (calibration record only)"
    click.echo(f"wrote {run.out}" + (f" and {run.plot}" if run.plot else "") + use)


@hookimpl
def id2_register_commands(cli: click.Group) -> None:
    cli.add_command(calibrate_command)
