"""Built-in command ``explain``: why a query scores what it scores against one reference."""

from __future__ import annotations

import sys
from typing import Any

import click

from ..cli_support import config_from_flags, config_option_flags, echo_json, handle_errors, outcome_code, printable
from ..hookspecs import hookimpl


@click.command("explain")
@click.argument("query", type=click.Path(exists=True, dir_okay=False))
@click.argument("reference", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the side-by-side picture here (.png, or .html embedding it); nothing is written without it.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the explanation as one JSON object.")
@config_option_flags
@click.pass_context
@handle_errors
def explain_command(
    ctx: click.Context, query: str, reference: str, out: str | None, as_json: bool, **flags: Any
) -> None:
    """Explain the match of QUERY against REFERENCE: each signal's score (id2, sscd, fused), the latent
    cell-by-cell similarity map and SIFT + RANSAC local-feature inliers, drawn side by side in --out.
    Exit 1 when the pair scores below the threshold, 4 when an image cannot be read."""
    from ..explain import explain_match

    expl = explain_match(query, reference, config_from_flags(ctx, **flags), out=out)
    if as_json:
        echo_json(expl.to_dict())
    else:
        for line in expl.summary():
            click.echo(printable(line))
        if expl.out is not None:
            click.echo(f"wrote {expl.out}")
    sys.exit(outcome_code(no_match=expl.score < expl.threshold))


@hookimpl
def id2_register_commands(cli: click.Group) -> None:
    cli.add_command(explain_command)
