"""``id2-plugin index add-ray``: ``index add`` with the hashing and embedding on Ray Data (see
:mod:`id2_plugin.ray_executor`)."""

from __future__ import annotations

import dataclasses
from typing import Any

import click

from ..cli_support import (
    config_from_flags,
    config_option_flags,
    expand_inputs,
    handle_errors,
    index_group,
    ray_option_flags,
    report_ingest,
)
from ..hookspecs import hookimpl
from ..pipeline import Pipeline, RayExecutor


@click.command("add-ray")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--label", "labels", multiple=True, help="Label stored with every added reference (repeatable).")
@click.option("--index-type", default=None, help="Index type when the store is created (store.index).")
@ray_option_flags("--workers", "Embedding actors (each loads the model once).")
@click.option(
    "--commit-every",
    type=click.IntRange(min=1),
    default=1024,
    show_default=True,
    help="Commit after this many new references, so an interrupted run keeps its work.",
)
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
@config_option_flags
@click.pass_context
@handle_errors
def index_add_ray(
    ctx: click.Context,
    paths: tuple[str, ...],
    labels: tuple[str, ...],
    index_type: str | None,
    ray_address: str | None,
    workers: int,
    cpus_per_worker: float,
    commit_every: int,
    no_progress: bool,
    **flags: Any,
) -> None:
    """Embed images (folders recurse) on Ray Data and add them to the store (FAISS or Qdrant).

    Content already in the store is skipped before embedding, so re-running after an interruption
    resumes without duplicates. Exit 4 if any file could not be read or decoded.
    """
    cfg = config_from_flags(ctx, **flags)
    if index_type:
        # replace() keeps every other flag (--embedder, --projection ...) in effect.
        cfg = dataclasses.replace(cfg, store=dataclasses.replace(cfg.store, index=index_type))
    executor = RayExecutor(address=ray_address, workers=workers, cpus_per_worker=cpus_per_worker)
    files, problems = expand_inputs(paths)  # each problem reported; the rest is still indexed
    with Pipeline.from_config(cfg, create_store=True) as pipeline:
        res = pipeline.add_files(
            files, labels=labels, commit_every=commit_every, progress=not no_progress, executor=executor
        )
    report_ingest(res, problems)


@hookimpl
def id2_register_commands(cli: click.Group) -> None:
    index_group.add_command(index_add_ray)
