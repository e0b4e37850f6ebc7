"""The ``query`` and ``embed`` features: identify files against the store, or write their embeddings."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import numpy as np
from tqdm import tqdm

from ..cli_support import (
    config_from_flags,
    config_option_flags,
    echo_json,
    expand_inputs,
    handle_errors,
    match_option_flags,
    outcome_code,
    parse_rotations,
    printable,
)
from ..errors import MediaError
from ..hookspecs import hookimpl
from ..media import describe
from ..pipeline import Pipeline, embedder_from_config


@click.command("query")
@click.argument("files", nargs=-1, required=True, type=click.Path())
@match_option_flags
@click.option("--json", "as_json", is_flag=True, help="One JSON report per line.")
@click.option(
    "--rotations",
    callback=parse_rotations,
    default=None,
    help="Also search the query turned by these degrees, e.g. 0,90,180,270 (match.rotations; k variants = "
    "k embeddings).",
)
@click.option(
    "--mirror/--no-mirror", default=None, help="Also search each rotation mirrored (match.mirror; doubles the cost)."
)
@click.option(
    "--windows",
    type=click.Choice(["auto", "always", "off"]),
    default=None,
    help="Search the query's 9 half-size windows too: below the threshold (auto), always, or never (match.windows).",
)
@config_option_flags
@click.pass_context
@handle_errors
def query(ctx: click.Context, files: tuple[str, ...], as_json: bool, **flags: Any) -> None:
    """Identify the origin of each FILE (folders recurse). Exit 1 if some file has no match, 4 if some
    file could not be read (reported; the rest is still queried)."""
    cfg = config_from_flags(ctx, **flags)
    paths, problems = expand_inputs(files)
    with Pipeline.from_config(cfg) as pipeline:
        unmatched, unreadable = _query_paths(pipeline, paths, as_json)
    sys.exit(outcome_code(unreadable=unreadable + len(problems), no_match=unmatched))


def _query_paths(pipeline: Any, paths: list[Path], as_json: bool) -> tuple[int, int]:
    """Print each report as its batch finishes; the number of files with no match and of unusable files."""
    counts = {"match": 0, "no_match": 0, "error": 0}
    with tqdm(total=len(paths), desc="querying", unit="img", disable=len(paths) < 2 or as_json) as bar:
        for path, report in zip(paths, pipeline.identify_iter(paths)):
            counts[_print_report(path, report, as_json)] += 1
            bar.update(1)
    return counts["no_match"], counts["error"]


def _print_report(path: Path, report: Any, as_json: bool) -> str:
    """Print one report; its outcome: ``match``, ``no_match`` or ``error``."""
    if isinstance(report, MediaError):
        if as_json:
            echo_json({"query": str(path), "error": str(report)})
        else:
            click.echo(printable(f"{path}: ERROR {report}"), err=True)
        return "error"
    outcome = "match" if report.is_match else "no_match"
    if as_json:
        echo_json(report.to_dict())
        return outcome
    rate = (
        ""
        if report.false_match_rate is None
        else f", false matches <= {report.false_match_rate:.2%} of unrelated queries"
    )
    click.echo(
        printable(f"{path}: {report.decision.upper()} ({report.score_kind} threshold {report.threshold:.3f}{rate})")
    )
    for m in report.matches:
        cosine = "" if m.cosine is None else f" cosine={m.cosine:.4f}"
        evidence = "".join(f" {name}={score:.3f}" for name, score in m.signals)
        turned = "".join(f" ({v})" for v in (m.orientation, m.window and f"window {m.window}") if v)
        click.echo(printable(f"  #{m.rank} score={m.score:.4f}{cosine}{evidence}{turned} id={m.reference_id} {m.uri}"))
    return outcome


@click.command("embed")
@click.argument("files", nargs=-1, required=True, type=click.Path())
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output .npz (embeddings, paths).")
@config_option_flags
@click.pass_context
@handle_errors
def embed(ctx: click.Context, files: tuple[str, ...], out: str, **flags: Any) -> None:
    """Embed FILEs (folders recurse) into an .npz with arrays ``embeddings`` and ``paths``. Exit 4 if some
    file could not be read (reported and left out)."""
    cfg = config_from_flags(ctx, **flags)
    paths, problems = expand_inputs(files)  # before the model loads: a wrong path fails in milliseconds
    embedder = embedder_from_config(cfg)
    vecs, names, bad = [], [], len(problems)
    for item in embedder.embed_iter(paths, progress="embedding", total=len(paths)):
        if item.error is not None:
            bad += 1
            click.echo(printable(f"skipped {item.error}"), err=True)
            continue
        vecs.append(item.vector)
        names.append(describe(item.source))
    arr = np.stack(vecs) if vecs else np.zeros((0, embedder.dim), np.float32)
    np.savez(out, embeddings=arr, paths=np.array(names), embedder=np.array(embedder.identity))
    click.echo(f"wrote {len(vecs)} embeddings of dim {embedder.dim} to {out}" + (f"; {bad} failed" if bad else ""))
    sys.exit(outcome_code(unreadable=bad))


@hookimpl
def id2_register_commands(cli: click.Group) -> None:
    cli.add_command(query)
    cli.add_command(embed)
