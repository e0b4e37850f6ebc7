"""``id2-plugin serve``: the HTTP service on the command line (registered through ``id2_register_commands``).

Kept apart from :mod:`id2_plugin.adapters.http` so that loading the CLI never imports FastAPI: the
service module is imported only when ``serve`` runs.
"""

from __future__ import annotations

from typing import Any

import click
import pluggy

from id2_plugin._cli_support import get_state, handle_errors

hookimpl = pluggy.HookimplMarker("id2_plugin")


@click.command("serve")
@click.option("--host", default=None, help="Interface to bind (serve.host, default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="TCP port (serve.port, default 8000).")
@click.option("--max-concurrency", type=int, default=None, help="Model workers (serve.max_concurrency).")
@click.option("--queue-size", type=int, default=None, help="Requests allowed to wait for a worker (serve.queue_size).")
@click.option("--timeout", "request_timeout_s", type=float, default=None,
              help="Seconds before a request gets 504 (serve.request_timeout_s).")
@click.option("--max-upload-bytes", type=int, default=None, help="Largest accepted body (serve.max_upload_bytes).")
@click.option("--create-store", is_flag=True, help="Create an empty store if none exists, to fill it over HTTP.")
@click.option("--k", type=int, default=None, help="Matches returned per query (match.k).")
@click.option("--threshold", type=float, default=None, help="Decision threshold on the cosine score (match.threshold).")
@click.option("--store", "store_path", default=None, help="Reference store folder (store.path).")
@click.option("--embedder", "embedder_name", default=None, help="Embedder name (embedder.name).")
@click.option("--projection", default=None, help="'default', 'none' (raw latent) or a W .safetensors path.")
@click.option("--device", default=None, help="auto, cpu, cuda, cuda:N (embedder.device).")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
@click.pass_context
@handle_errors
def serve_command(ctx: click.Context, create_store: bool, log_level: str, **flags: Any) -> None:
    """Serve identification over HTTP (POST /v1/identify, /v1/references; docs at /docs).

    Writes (adding / removing references) need a bearer token: set serve.token in the config or, better,
    the ID2_SERVE_TOKEN environment variable. Without one the service is read-only.
    """
    from .http import build_identifier, serve, token_from_env

    keys = {
        "serve.host": "host", "serve.port": "port", "serve.max_concurrency": "max_concurrency",
        "serve.queue_size": "queue_size", "serve.request_timeout_s": "request_timeout_s",
        "serve.max_upload_bytes": "max_upload_bytes", "match.k": "k", "match.threshold": "threshold",
        "store.path": "store_path", "embedder.name": "embedder_name", "embedder.projection": "projection",
        "embedder.device": "device",
    }
    cfg = get_state(ctx).config(**{dotted: flags.get(name) for dotted, name in keys.items()})
    serve_cfg = token_from_env(cfg.serve)
    # Loaded before the server starts, so a missing store or model is a clean CLI error, not a traceback.
    identifier = build_identifier(cfg, create_store=create_store)
    info = identifier.context.store.info()
    click.echo(
        f"id2-plugin serving {info.count} references ({identifier.context.embedder.identity}) on "
        f"http://{serve_cfg.host}:{serve_cfg.port} — writes {'enabled' if serve_cfg.token else 'disabled (no token)'}",
        err=True,
    )
    serve(identifier, serve_cfg, log_level=log_level)


@hookimpl
def id2_register_commands(cli: click.Group) -> None:
    cli.add_command(serve_command)
