"""The ``index`` feature: ``index add``, ``index info`` and ``index remove`` on the configured store.

The ``index`` group itself is shared (:data:`id2_plugin.cli_support.index_group`): other features (store
maintenance, Ray indexing) attach their subcommands to it, so disabling this plugin drops only these three.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any

import click

from ..assembly import model_for_identity, open_store
from ..cli_support import (
    EXIT_NO_MATCH,
    EXIT_OK,
    EXIT_STORE,
    config_from_flags,
    config_option_flags,
    echo_json,
    expand_inputs,
    handle_errors,
    index_group,
    report_ingest,
)
from ..hookspecs import hookimpl
from ..pipeline import Pipeline, remove_references
from ..stores.base import embedder_kind


@click.command("add")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--label", "labels", multiple=True, help="Label stored with every added reference (repeatable).")
@click.option("--index-type", default=None, help="Index type when the store is created (store.index).")
@click.option(
    "--commit-every",
    type=click.IntRange(min=1),
    default=1024,
    show_default=True,
    help="Commit after this many new references, so an interrupted run keeps its work.",
)
@config_option_flags
@click.pass_context
@handle_errors
def index_add(
    ctx: click.Context,
    paths: tuple[str, ...],
    labels: tuple[str, ...],
    index_type: str | None,
    commit_every: int,
    **flags: Any,
) -> None:
    """Embed images (folders recurse) and add them to the store; duplicates (same bytes) are skipped.
    Exit 4 if some file could not be read (reported; the rest is added)."""
    cfg = config_from_flags(ctx, **flags)
    if index_type:
        cfg = dataclasses.replace(cfg, store=dataclasses.replace(cfg.store, index=index_type))
    files, problems = expand_inputs(paths)  # each problem reported; the rest is still indexed
    with Pipeline.from_config(cfg, create_store=True) as pipeline:
        # Commits every commit_every references, so an interrupted run keeps what it embedded.
        res = pipeline.add_files(files, labels=labels, commit_every=commit_every, progress=True)
    report_ingest(res, problems)


@click.command("info")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@config_option_flags
@click.pass_context
@handle_errors
def index_info(ctx: click.Context, as_json: bool, **flags: Any) -> None:
    """Show the store's size, dimension, index type and embedder identity."""
    cfg = config_from_flags(ctx, **flags)
    with open_store(cfg.store, embedder_identity=None, dim=None, create=False) as store:
        info = store.info()
    doc = dict(
        info.to_dict(),
        method=embedder_kind(info.embedder),
        status=info.extra.get("status", "ok"),
        decision=_decision_summary(cfg, info),
    )
    if as_json:
        echo_json(doc)
    else:
        for k, v in doc.items():
            # nested details (index options, tuning) as JSON, not a Python repr
            click.echo(f"{k}: {json.dumps(v, default=str) if isinstance(v, (dict, list)) else v}")
    if doc["status"].startswith("damaged"):
        click.echo("error: the store is damaged; run `id2-plugin index verify --repair`", err=True)
        sys.exit(EXIT_STORE)


def _decision_summary(cfg: Any, info: Any) -> dict[str, Any] | str:
    """How this store's queries are decided: the calibrated operating point and its false-match bound at the
    store's size (false matches grow with the store), or why the cosine decides uncalibrated."""
    model = model_for_identity(cfg.match.decision, info.embedder) if info.embedder else None
    op = model.operating_point if model is not None else None
    if op is None:
        return "cosine, uncalibrated for this store's embedder (run `id2-plugin calibrate --store`)"
    return {
        "model": model.source,
        "decides": "cosine" if cfg.match.decision == "cosine" else "model",
        "threshold": op.threshold,
        "cosine_threshold": op.cosine_threshold,
        "target_false_match_rate": op.target_fpr,
        "pair_rate_bound": op.pair_fpr_upper_bound,
        "false_match_rate_bound_at_this_size": round(op.per_query_fpr(info.count), 6),
        "calibrated_at_references": op.n_references,
        "candidates": [{"ranking": r, "n": n} for r, n in model.candidates],
        "route": None if model.route is None else dataclasses.asdict(model.route),
    }


@click.command("remove")
@click.argument("keys", nargs=-1, required=True)
@config_option_flags
@click.pass_context
@handle_errors
def index_remove(ctx: click.Context, keys: tuple[str, ...], **flags: Any) -> None:
    """Remove references by reference id, sha256, or the path of the original file. Exit 1 if some key
    matched no reference."""
    cfg = config_from_flags(ctx, **flags)
    # Removing needs no model: the store is opened for any embedder.
    with open_store(cfg.store, embedder_identity=None, dim=None, create=False) as store:
        n = remove_references(store, keys)
    click.echo(f"removed {n} of {len(keys)}")
    sys.exit(EXIT_OK if n == len(keys) else EXIT_NO_MATCH)


@hookimpl
def id2_register_commands(cli: click.Group) -> None:
    for cmd in (index_add, index_info, index_remove):
        index_group.add_command(cmd)
