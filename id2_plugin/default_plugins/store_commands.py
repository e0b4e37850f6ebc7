"""FAISS store maintenance commands: ``index tune``, ``index compact`` and ``index verify`` (added to ``index``)."""

from __future__ import annotations

import sys
from typing import Any

import click

from ..assembly import open_store
from ..cli_support import (
    EXIT_OK,
    EXIT_STORE,
    config_from_flags,
    config_option_flags,
    echo_json,
    handle_errors,
    index_group,
)
from ..errors import StoreError
from ..hookspecs import hookimpl
from ..stores.faiss_store import FaissStore
from ..stores.tuning import tune_search


def _open_faiss(ctx: click.Context, flags: dict[str, Any]) -> Any:
    cfg = config_from_flags(ctx, **flags)
    store = open_store(cfg.store, embedder_identity=None, dim=None, create=False)
    if not isinstance(store, FaissStore):
        store.close()
        raise StoreError(f"this command needs the faiss backend; store.backend is {cfg.store.backend!r}")
    return store


@click.command("tune")
@click.option(
    "--target-recall",
    type=click.FloatRange(0.0, 1.0, min_open=True),
    default=0.99,
    show_default=True,
    help="Recall@1 against exact search the chosen setting must reach.",
)
@click.option(
    "--queries",
    "n_queries",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Number of stored vectors sampled (then perturbed) as queries.",
)
@click.option(
    "--query-similarity",
    type=click.FloatRange(-1.0, 1.0),
    default=0.8,
    show_default=True,
    help="Cosine between a tuning query and the stored vector it is made from (1 = unchanged).",
)
@click.option("--no-save", is_flag=True, help="Only report; do not store the chosen value.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@config_option_flags
@click.pass_context
@handle_errors
def index_tune(
    ctx: click.Context,
    target_recall: float,
    n_queries: int,
    query_similarity: float,
    no_save: bool,
    as_json: bool,
    **flags: Any,
) -> None:
    """Choose the cheapest nprobe (IVF) / efSearch (HNSW) reaching TARGET recall@1 and save it in the store.

    PQ indexes then get the smallest re-ranking depth (``rerank``) that keeps the target."""
    with _open_faiss(ctx, flags) as store:
        result = tune_search(
            store, None, target_recall, n_queries=n_queries, query_similarity=query_similarity, save=not no_save
        )
    if as_json:
        echo_json(result.to_dict())
        return
    if result.parameter is None:
        click.echo(f"{result.index_type}: {result.note}")
        return
    click.echo(
        f"{result.index_type} over {result.n_vectors} vectors, {result.n_queries} queries "
        f"(cosine {result.query_similarity} to a stored vector):"
    )
    click.echo(f"  {result.parameter:>8}  recall@1  ms/query")
    for p in result.curve:
        click.echo(f"  {p.value:>8}  {p.recall_at_1:8.4f}  {p.ms_per_query:8.3f}")
    verdict = "reaches" if result.reached else "does NOT reach (best tried)"
    click.echo(
        f"chosen {result.parameter}={result.value}: recall@1 {result.recall_at_1:.4f} {verdict} target "
        f"{result.target_recall}" + ("; saved to the store" if result.saved else "; not saved")
    )
    if "rerank" in result.extra:
        tried = ", ".join(f"{p['value']}: {p['recall_at_1']:.4f}" for p in result.extra["rerank_curve"])
        click.echo(
            f"chosen rerank={result.extra['rerank']} (re-scores rerank x max(k, 10) candidates; "
            f"smaller depths tried: {tried or 'none'})"
        )


@click.command("compact")
@click.option("--rebuild", is_flag=True, help="Retrain / rebuild the ANN index from the raw vectors.")
@config_option_flags
@click.pass_context
@handle_errors
def index_compact(ctx: click.Context, rebuild: bool, **flags: Any) -> None:
    """Fold recently added references into the ANN index now (e.g. after a bulk load)."""
    with _open_faiss(ctx, flags) as store:
        done = store.compact(rebuild=rebuild)
        info = store.info()
    click.echo(f"{done or 'nothing to do'}; {info.extra['search']}")


@click.command("verify")
@click.option(
    "--repair",
    is_flag=True,
    help="Make a damaged store usable: drop references whose vectors are lost, zero the vectors "
    "of removed references still on disk, rebuild the index from the vectors and SQLite.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@config_option_flags
@click.pass_context
@handle_errors
def index_verify(ctx: click.Context, repair: bool, as_json: bool, **flags: Any) -> None:
    """Check every store file against the committed metadata (exit 3 when damaged and not repaired)."""
    with _open_faiss(ctx, flags) as store:
        problems = store.verify()
        repaired = store.repair() if repair and problems else []
        left = store.verify() if repair and problems else problems
    if as_json:
        echo_json({"problems": problems, "repaired": repaired, "ok": not left})
    else:
        for line in problems:
            click.echo(f"damaged: {line}")
        for line in repaired:
            click.echo(f"repaired: {line}")
        # --repair rebuilds everything from store.sqlite, so a damaged database is beyond it
        fix = (
            "restore store.sqlite from a backup or build the store again with `id2-plugin index add`"
            if any(p.startswith("store.sqlite") for p in left)
            else "run `id2-plugin index verify --repair`"
        )
        click.echo("store is sound" if not left else f"store is damaged; {fix}")
    sys.exit(EXIT_OK if not left else EXIT_STORE)


@hookimpl
def id2_register_commands(cli: click.Group) -> None:
    for cmd in (index_tune, index_compact, index_verify):
        index_group.add_command(cmd)
