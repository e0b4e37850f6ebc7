"""Built-in command ``explain``: why a query scores what it scores against one reference."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

import click

from ..assembly import open_store
from ..cli_support import config_from_flags, config_option_flags, echo_json, handle_errors, outcome_code, printable
from ..config import Config
from ..errors import StoreError
from ..explain import explain_match
from ..hookspecs import hookimpl
from ..pipeline import Pipeline


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

    With a reference store (--store, or the configured one when it exists) it also gives the decision on
    the pair as identification against that store takes it: the decision score against the shipped operating
    point, whether the query windows were searched, and where REFERENCE ranks among the query's store
    candidates. Without one the pair's fused cosine is compared with the cosine operating point.
    Exit 1 when the pair is not a match, 4 when an image cannot be read."""
    cfg = config_from_flags(ctx, **flags)
    with _store_pipeline(cfg, explicit=flags.get("store") is not None) as pipeline:
        expl = explain_match(query, reference, cfg, out=out, pipeline=pipeline)
    if as_json:
        echo_json(expl.to_dict())
    else:
        for line in expl.summary():
            click.echo(printable(line))
        if expl.out is not None:
            click.echo(f"wrote {expl.out}")
    sys.exit(outcome_code(no_match=not expl.is_match))


@contextlib.contextmanager
def _store_pipeline(cfg: Config, *, explicit: bool) -> Iterator[Pipeline | None]:
    """The pipeline of the configured store, or None (with a notice) when that store does not exist and was
    not named on the command line; a store named with --store must exist."""
    try:
        open_store(cfg.store, embedder_identity=None, dim=None, create=False).close()
    except StoreError as exc:
        if explicit:
            raise
        click.echo(printable(f"note: no reference store ({exc}); the pair alone is explained"), err=True)
        yield None
        return
    with Pipeline.from_config(cfg) as pipeline:
        yield pipeline


@hookimpl
def id2_register_commands(cli: click.Group) -> None:
    cli.add_command(explain_command)
