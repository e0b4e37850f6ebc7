"""HTTP service: identify uploads against the reference store, and manage references (FastAPI).

Endpoints (OpenAPI schema at ``/openapi.json``, interactive docs at ``/docs``):

* ``POST /v1/identify[?k=N]`` — an image as a multipart upload (field ``file``) or as the raw request body;
  returns the :class:`~id2_plugin.OriginReport` as JSON. 422 if the upload is not a decodable image.
* ``POST /v1/references`` — one or more images (multipart field ``file``, repeatable; optional ``label``
  fields) or one raw body (``?uri=...&label=...``); returns the ids added and the duplicates skipped.
* ``POST /v1/explain`` — two images (multipart files ``query`` and ``reference``): each signal's score,
  the latent similarity map summary and SIFT inliers as JSON, or ``?format=png|html`` the picture
  (:func:`~id2_plugin.explain_match`), built in memory and never stored.
* ``POST /v1/identify/batch[?k=N]`` — several images (multipart field ``file``, repeatable): one report each,
  in order (an unusable image gets ``{"query", "error"}``), embedded and searched in batches.
* ``DELETE /v1/references/{key}`` — remove a reference by id or sha256 (404 if unknown).
* ``GET /healthz``, ``GET /v1/info`` — liveness, and the model / store / limits in use.

**Writes** need ``Authorization: Bearer <serve.token>``; with no token configured they are disabled
(403): a service exposed without a token is read-only. Reads are open.

**Limits, never unbounded memory.** Bodies above ``serve.max_upload_bytes`` get 413 (checked on the
declared length and again while streaming). Model work (decode, embed, search, store writes) runs in a
thread pool of ``serve.max_concurrency`` workers; at most ``serve.queue_size`` more requests wait for a
worker, and admission happens before the body is read, so at most ``max_concurrency + queue_size``
bodies are in memory. Beyond that a request gets 503 with ``Retry-After`` at once. A request that has not
finished within ``serve.request_timeout_s`` (queueing included) gets 504; its worker slot is released only
when the abandoned computation actually ends, so timeouts cannot pile up threads, and a batch given up
stops between its batches (:mod:`._http_worker`). Connections are bounded apart (:mod:`._http_connections`):
a request head has ``serve.head_timeout_s`` to arrive, and idle connections make room for new ones.

**One writer.** Reference writes are serialised in-process by a lock (the store additionally takes its
file lock, which serialises writers across processes).

**One error shape.** Every error answer is ``{"detail": "<one line>"}`` (:class:`ErrorBody`), request
validation (422) included; the OpenAPI spec declares, per route, each status it can answer with and the
body of each (see :mod:`._http_schema`).

This module builds the application and runs it; the routes are in :mod:`._http_routes`, admission in
:mod:`._http_admission`, what the routes answer in :mod:`._http_answers`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException

from id2_plugin import __version__
from id2_plugin.config import ServeConfig
from id2_plugin.errors import ConfigError, Id2Error, MediaError, StoreError
from id2_plugin.pipeline import Pipeline

from ._http_admission import Capacity, LimitsMiddleware
from ._http_answers import redact_paths
from ._http_connections import bounded_protocol
from ._http_routes import add_identify_routes, add_status_routes, add_write_routes
from ._http_schema import error_response
from ._http_worker import Service

__all__ = ["create_app", "serve", "token_from_env"]


def create_app(
    pipeline_or_factory: Pipeline | Callable[[], Pipeline],
    serve_config: ServeConfig | None = None,
) -> FastAPI:
    """Build the FastAPI application.

    ``pipeline_or_factory`` is a ready :class:`~id2_plugin.pipeline.Pipeline` or a zero-argument callable
    returning one; a callable runs (in a thread) when the server starts, so the model is loaded before the
    first request is accepted and never at import.
    """
    cfg = serve_config or ServeConfig()
    _check_serve_config(cfg)
    capacity = Capacity(cfg.max_concurrency, cfg.queue_size)
    holder: dict[str, Service] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        if isinstance(pipeline_or_factory, Pipeline):
            built = pipeline_or_factory
        else:
            built = await asyncio.get_running_loop().run_in_executor(None, pipeline_or_factory)
        service = Service(built, cfg)
        holder["service"] = service
        try:
            yield
        finally:
            service.pool.shutdown(wait=False, cancel_futures=True)

    # /docs and /redoc from assets shipped in fastapi-offline: FastAPI's own pages load Swagger UI and
    # ReDoc from a CDN and stay blank on the offline machines moderation teams often run.
    app = FastAPIOffline(
        title="id2-plugin",
        version=__version__,
        description="Find the original of an AI-edited or degraded image in a reference store (ID2).",
        lifespan=lifespan,
    )
    app.add_middleware(LimitsMiddleware, capacity=capacity, cfg=cfg)
    app.state.serve_config = cfg  # what server_options() needs to run this app as serve() does

    def service() -> Service:
        svc = holder.get("service")
        if svc is None:
            raise HTTPException(503, "the model is still loading")
        return svc

    _add_error_handlers(app, cfg)
    add_status_routes(app, service, capacity)
    add_identify_routes(app, service)
    add_write_routes(app, service)
    return app


def _check_serve_config(cfg: ServeConfig) -> None:
    if cfg.max_concurrency < 1 or cfg.queue_size < 0:
        raise ConfigError(
            f"serve.max_concurrency={cfg.max_concurrency} must be >= 1 and serve.queue_size={cfg.queue_size} >= 0"
        )
    positive = ("max_upload_bytes", "request_timeout_s", "upload_timeout_s", "head_timeout_s", "max_uploads")
    bad = [f"serve.{name}={getattr(cfg, name)}" for name in positive if getattr(cfg, name) <= 0]
    if cfg.idle_connections < 0:
        bad.append(f"serve.idle_connections={cfg.idle_connections}")
    if bad:
        raise ConfigError(f"{', '.join(bad)}: expected a positive number (idle_connections: 0 or more)")


def _add_error_handlers(app: FastAPI, cfg: ServeConfig) -> None:
    """Library errors as HTTP answers: bad media 422, store trouble 503, anything else of ours 500."""

    def said(exc: Exception) -> str:
        return str(exc) if cfg.expose_paths else redact_paths(str(exc))

    @app.exception_handler(MediaError)
    async def _media_error(_: Request, exc: MediaError) -> JSONResponse:
        return error_response(422, f"not a usable image: {said(exc)}")

    @app.exception_handler(StoreError)
    async def _store_error(_: Request, exc: StoreError) -> JSONResponse:
        return error_response(503, f"reference store unavailable: {said(exc)}")

    @app.exception_handler(Id2Error)
    async def _id2_error(_: Request, exc: Id2Error) -> JSONResponse:
        return error_response(500, said(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, f"invalid request: {_validation_summary(exc)}")


def _validation_summary(exc: RequestValidationError) -> str:
    """FastAPI's validation errors as one line, e.g. ``query k: Input should be greater than or equal to 1``."""
    parts = []
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ())]
        where = f"{loc[0]} {'.'.join(loc[1:])}".strip() if loc else "request"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def serve(
    pipeline_or_factory: Pipeline | Callable[[], Pipeline],
    serve_config: ServeConfig | None = None,
    *,
    log_level: str = "info",
) -> None:
    """Run the service with uvicorn in this process until interrupted (``id2-plugin serve``)."""
    import uvicorn

    cfg = serve_config or ServeConfig()
    app = create_app(pipeline_or_factory, cfg)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=log_level, **server_options(cfg))


def server_options(cfg: ServeConfig) -> dict[str, Any]:
    """uvicorn's settings for ``cfg``: the connection budget in place of uvicorn's ``limit_concurrency``,
    which counts idle connections."""
    return {
        "http": bounded_protocol(head_timeout_s=cfg.head_timeout_s, max_connections=max_connections(cfg)),
        "limit_concurrency": None,
        "timeout_keep_alive": 5,
    }


def max_connections(cfg: ServeConfig) -> int:
    """Connections kept open: every request the budgets can hold (uploads, workers, queue) plus
    ``serve.idle_connections`` for the cheap reads and idle keep-alive ones (closed first when the budget is
    reached)."""
    return cfg.max_uploads + cfg.max_concurrency + cfg.queue_size + cfg.idle_connections


def token_from_env(cfg: ServeConfig) -> ServeConfig:
    """``$ID2_SERVE_TOKEN`` wins over ``serve.token`` (keeps the secret out of files and process lists)."""
    env = os.environ.get("ID2_SERVE_TOKEN")
    return dataclasses.replace(cfg, token=env) if env else cfg
