"""``id2-plugin serve``: the HTTP service on the command line (registered through ``id2_register_commands``).

Kept apart from :mod:`id2_plugin.adapters.http` so that loading the CLI never imports FastAPI: the
service module is imported only when ``serve`` runs.
"""

from __future__ import annotations

from typing import Any

import click

from id2_plugin.cli_support import config_from_flags, config_option_flags, handle_errors, match_option_flags
from id2_plugin.hookspecs import hookimpl


@click.command("serve")
@click.option("--host", default=None, help="Interface to bind (serve.host, default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="TCP port (serve.port, default 8000).")
@click.option("--max-concurrency", type=int, default=None, help="Model workers (serve.max_concurrency).")
@click.option("--queue-size", type=int, default=None, help="Requests allowed to wait for a worker (serve.queue_size).")
@click.option(
    "--timeout",
    "request_timeout_s",
    type=float,
    default=None,
    help="Seconds before a request gets 504 (serve.request_timeout_s).",
)
@click.option("--max-upload-bytes", type=int, default=None, help="Largest accepted body (serve.max_upload_bytes).")
@click.option("--create-store", is_flag=True, help="Create an empty store if none exists, to fill it over HTTP.")
@match_option_flags
@config_option_flags
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
)
@click.pass_context
@handle_errors
def serve_command(ctx: click.Context, create_store: bool, log_level: str, **flags: Any) -> None:
    """Serve identification over HTTP (POST /v1/identify, /v1/references; docs at /docs).

    Writes (adding / removing references) need a bearer token: set serve.token in the config or, better,
    the ID2_SERVE_TOKEN environment variable. Without one the service is read-only.
    """
    from id2_plugin.extras import require
    from id2_plugin.pipeline import Pipeline

    require("fastapi")  # the [http] extra: a clear MissingExtraError instead of an import traceback
    require("uvicorn")
    require("fastapi_offline")
    from .http import serve, token_from_env

    serve_keys = {
        name: f"serve.{name}"
        for name in ("host", "port", "max_concurrency", "queue_size", "request_timeout_s", "max_upload_bytes")
    }
    cfg = config_from_flags(ctx, extra_keys=serve_keys, **flags)
    serve_cfg = token_from_env(cfg.serve)
    # Loaded before the server starts, so a missing store or model is a clean CLI error, not a traceback.
    pipeline = Pipeline.from_config(cfg, create_store=create_store)
    info = pipeline.store.info()
    click.echo(
        f"id2-plugin serving {info.count} references ({pipeline.embedder.identity}) on "
        f"http://{serve_cfg.host}:{serve_cfg.port} — writes {'enabled' if serve_cfg.token else 'disabled (no token)'}",
        err=True,
    )
    serve(pipeline, serve_cfg, log_level=log_level)


@hookimpl
def id2_register_commands(cli: click.Group) -> None:
    cli.add_command(serve_command)
