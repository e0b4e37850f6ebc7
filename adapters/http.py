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
stops between its batches. Connections are bounded apart (:mod:`._http_connections`): a request head has
``serve.upload_timeout_s`` to arrive, and idle connections make room for new ones.

**One writer.** Reference writes are serialised in-process by a lock (the store additionally takes its
file lock, which serialises writers across processes).

**One error shape.** Every error answer is ``{"detail": "<one line>"}`` (:class:`ErrorBody`), request
validation (422) included; the OpenAPI spec declares, per route, each status it can answer with and the
body of each (see :mod:`._http_schema`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hmac
import itertools
import json
import os
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPBearer
from fastapi_offline import FastAPIOffline
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from id2_plugin.config import ServeConfig
from id2_plugin.errors import ConfigError, Id2Error, MediaError, StoreError
from id2_plugin.pipeline import Pipeline, Upload

from . import _http_schema as S
from ._http_admission import Capacity, LimitsMiddleware
from ._http_connections import bounded_protocol
from ._http_schema import error_response

__all__ = ["create_app", "serve", "token_from_env"]

T = TypeVar("T")

#: connections beyond the request budgets: /healthz, /v1/info, /docs and idle keep-alive ones
_CONNECTION_HEADROOM = 64

_IMAGE_BODY = {
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"file": {"type": "string", "format": "binary"}},
                "required": ["file"],
            }
        },
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "image/*": {"schema": {"type": "string", "format": "binary"}},
    },
    "required": True,
}
_EXPLAIN_BODY = {
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {
                    "query": {"type": "string", "format": "binary"},
                    "reference": {"type": "string", "format": "binary"},
                },
                "required": ["query", "reference"],
            }
        },
    },
    "required": True,
}
_REFERENCES_BODY = {
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {
                    "file": {"type": "array", "items": {"type": "string", "format": "binary"}},
                    "label": {"type": "array", "items": {"type": "string"}},
                },
                "required": ["file"],
            }
        },
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "image/*": {"schema": {"type": "string", "format": "binary"}},
    },
    "required": True,
}


#: declares the bearer scheme of the write routes in the spec; the token itself is checked by _Service.check_token
_BEARER = HTTPBearer(auto_error=False, description="serve.token (or $ID2_SERVE_TOKEN)")


class _Service:
    """Runtime state: the pipeline, the worker pool, the write lock."""

    def __init__(self, pipeline: Pipeline, cfg: ServeConfig) -> None:
        self.pipeline = pipeline
        self.cfg = cfg
        self.pool = ThreadPoolExecutor(max_workers=cfg.max_concurrency, thread_name_prefix="id2-http")
        self.slots = asyncio.Semaphore(cfg.max_concurrency)
        #: workers currently held (by running or abandoned-after-timeout computations)
        self.busy = 0
        self.write_lock = asyncio.Lock()
        self.started = time.time()

    @property
    def store(self) -> Any:
        return self.pipeline.store

    def deadline(self) -> float:
        """The monotonic time by which a request arriving now must be answered."""
        return time.monotonic() + self.cfg.request_timeout_s

    async def run(
        self, fn: Callable[..., T], *args: Any, deadline: float, abandon: Callable[[], None] | None = None
    ) -> T:
        """Run ``fn`` on a worker once one is free; 504 when ``deadline`` (monotonic) passes first.

        ``abandon`` is called when the request is given up (504 or client gone) while ``fn`` still runs,
        so that work nobody will read can stop early.
        """
        waiting = asyncio.ensure_future(self.slots.acquire())
        try:
            await asyncio.wait_for(asyncio.shield(waiting), timeout=max(deadline - time.monotonic(), 0.0))
        except asyncio.TimeoutError:
            waiting.cancel()
            try:
                await waiting
            except asyncio.CancelledError:
                pass
            else:  # the slot was granted just as the wait timed out: give it back
                self.slots.release()
            raise HTTPException(504, "request timed out waiting for a worker (serve.request_timeout_s)") from None
        self.busy += 1
        fut = asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)
        handed_off = False

        def release(done: Any = None) -> None:
            if done is not None and not done.cancelled():
                done.exception()  # retrieved, so an abandoned failure is not reported as "never retrieved"
            self.busy -= 1
            self.slots.release()

        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout=max(deadline - time.monotonic(), 0.0))
        except (asyncio.TimeoutError, asyncio.CancelledError) as exc:
            if not fut.done():
                # A thread cannot be interrupted: its worker slot stays taken until it really ends.
                handed_off = True
                fut.add_done_callback(release)
                if abandon is not None:
                    abandon()
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise HTTPException(504, "request timed out (serve.request_timeout_s)") from None
        finally:
            if not handed_off:
                release()

    def check_token(self, request: Request) -> None:
        token = self.cfg.token
        if not token:
            raise HTTPException(403, "writes are disabled: no serve.token is configured for this server")
        auth = request.headers.get("authorization", "")
        scheme, _, given = auth.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})


async def _read_uploads(request: Request, *, many: bool) -> tuple[list[tuple[str, bytes]], list[str]]:
    """``[(name, bytes)]`` from a multipart form (field ``file``) or the raw body, plus form labels."""
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=1000 if many else 1, max_fields=100)
        except HTTPException:
            raise
        except Exception as exc:  # malformed multipart bodies raise parser-specific errors
            raise HTTPException(400, f"malformed multipart body: {exc}") from None
        files = [f for f in form.getlist("file") if isinstance(f, UploadFile)]
        if not files:
            raise HTTPException(422, "multipart upload needs a 'file' field holding the image")
        if len(files) > 1 and not many:
            raise HTTPException(422, "send one image per request to /v1/identify")
        out = [(f.filename or f"upload-{i}", await f.read()) for i, f in enumerate(files)]
        labels = [str(x) for x in form.getlist("label") if isinstance(x, str)]
        await form.close()
        return out, labels
    body = await request.body()
    return [("upload", body)], []


async def _read_pair(request: Request) -> tuple[bytes, bytes]:
    """The ``query`` and ``reference`` files of a multipart form (``/v1/explain``)."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise HTTPException(422, "send a multipart form with the files 'query' and 'reference'")
    try:
        form = await request.form(max_files=2, max_fields=10)
    except HTTPException:
        raise
    except Exception as exc:  # malformed multipart bodies raise parser-specific errors
        raise HTTPException(400, f"malformed multipart body: {exc}") from None
    files = [form.get(name) for name in ("query", "reference")]
    if not all(isinstance(f, UploadFile) for f in files):
        raise HTTPException(422, "multipart upload needs the files 'query' and 'reference'")
    data = [await f.read() for f in files]  # type: ignore[union-attr]
    await form.close()
    if not all(data):
        raise HTTPException(422, "empty upload: send both images' bytes")
    return data[0], data[1]


def _explain_body(pipeline: Pipeline, query: bytes, reference: bytes, fmt: str) -> tuple[bytes, str]:
    """The explanation as JSON, or its picture; built in memory, never written to disk."""
    from id2_plugin.explain import explain_pair, render_explanation

    expl, images = explain_pair(query, reference, pipeline.embedder, threshold=pipeline.cosine_threshold)
    if fmt == "json":
        return json.dumps(expl.to_dict()).encode(), "application/json"
    data, _ = render_explanation(expl, images, fmt)
    return data, "image/png" if fmt == "png" else "text/html; charset=utf-8"


def _report_json(pipeline: Pipeline, data: bytes, name: str, expose_paths: bool, k: int | None) -> dict[str, Any]:
    return _public_report(pipeline.identify(data, k=k), name, expose_paths)


def _batch_json(
    pipeline: Pipeline, uploads: list[tuple[str, bytes]], expose_paths: bool, k: int | None, stop: threading.Event
) -> dict[str, Any]:
    """One report (or error) per upload; stops between batches once ``stop`` is set (the request was given up)."""
    media = itertools.takewhile(lambda _: not stop.is_set(), (data for _, data in uploads))
    results = []
    for (name, _), r in zip(uploads, pipeline.identify_iter(media, k=k)):
        if stop.is_set():
            break
        results.append(
            {"query": name, "error": f"not a usable image: {r}"}
            if isinstance(r, MediaError)
            else _public_report(r, name, expose_paths)
        )
    return {"results": results}


def _public_report(report: Any, name: str, expose_paths: bool) -> dict[str, Any]:
    if not expose_paths:
        report = dataclasses.replace(
            report, matches=tuple(dataclasses.replace(m, uri=public_uri(m.uri)) for m in report.matches)
        )
    return dataclasses.replace(report, query=name).to_dict()


#: an absolute POSIX or Windows path inside a message (not a URL's path: no "scheme:" just before it)
_PATH = re.compile(r"(?<![\w:/])(?:[A-Za-z]:\\|/)(?:[^\s'\"<>|,;()]+[/\\])+([^\s'\"<>|,;()/\\]*)")


def public_uri(uri: str) -> str:
    """A reference uri as clients see it: a server file path becomes its file name; other uris stay."""
    path = uri[len("file://") :] if uri.startswith("file://") else uri
    if os.path.isabs(path) or re.match(r"^[A-Za-z]:[\\/]", path):
        return os.path.basename(path.rstrip("/\\")) or uri
    return uri


def redact_paths(text: str) -> str:
    """``text`` with every absolute server path cut to ``.../name``."""
    return _PATH.sub(lambda m: f".../{m.group(1)}", text)


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
    holder: dict[str, _Service] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        if isinstance(pipeline_or_factory, Pipeline):
            built = pipeline_or_factory
        else:
            built = await asyncio.get_running_loop().run_in_executor(None, pipeline_or_factory)
        service = _Service(built, cfg)
        holder["service"] = service
        try:
            yield
        finally:
            service.pool.shutdown(wait=False, cancel_futures=True)

    from id2_plugin import __version__

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

    def service() -> _Service:
        svc = holder.get("service")
        if svc is None:
            raise HTTPException(503, "the model is still loading")
        return svc

    _add_error_handlers(app, cfg)
    _add_read_routes(app, service, capacity)
    _add_write_routes(app, service)
    return app


def _check_serve_config(cfg: ServeConfig) -> None:
    if cfg.max_concurrency < 1 or cfg.queue_size < 0:
        raise ConfigError(
            f"serve.max_concurrency={cfg.max_concurrency} must be >= 1 and serve.queue_size={cfg.queue_size} >= 0"
        )
    if cfg.max_upload_bytes < 1 or cfg.request_timeout_s <= 0 or cfg.upload_timeout_s <= 0 or cfg.max_uploads < 1:
        raise ConfigError(
            "serve.max_upload_bytes, request_timeout_s, upload_timeout_s and max_uploads must be positive"
        )


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


def _add_read_routes(app: FastAPI, service: Callable[[], _Service], capacity: Capacity) -> None:
    """``/healthz``, ``/v1/info`` and ``/v1/identify``: open to every client."""

    @app.get(
        "/healthz",
        summary="Liveness: 200 once the model is loaded",
        response_model=None,
        responses=S.responses(S.ok(S.HealthBody, "The model is loaded")),
    )
    async def healthz() -> dict[str, Any]:
        svc = service()
        return {"status": "ok", "uptime_s": round(time.time() - svc.started, 3)}

    @app.get(
        "/v1/info",
        summary="Model, store and limits in use",
        response_model=None,
        responses=S.responses(S.ok(S.InfoBody, "Model, store and limits"), 504),
    )
    async def info() -> dict[str, Any]:
        svc = service()
        store_info = await svc.run(svc.store.info, deadline=svc.deadline())
        return _info_json(svc, store_info, capacity)

    @app.post(
        "/v1/identify",
        summary="Identify the original of an uploaded image",
        openapi_extra={"requestBody": _IMAGE_BODY},
        response_model=None,
        responses=S.responses(S.ok(S.ReportBody, "The origin report"), *S.UPLOAD_ERRORS),
    )
    async def identify(
        request: Request, k: int | None = Query(None, ge=1, le=1000, description="Matches to return (default match.k)")
    ) -> dict[str, Any]:
        svc = service()
        deadline = svc.deadline()
        uploads, _ = await _read_uploads(request, many=False)
        name, data = uploads[0]
        if not data:
            raise HTTPException(422, "empty upload: send the image bytes")
        return await svc.run(_report_json, svc.pipeline, data, name, svc.cfg.expose_paths, k, deadline=deadline)

    @app.post(
        "/v1/identify/batch",
        summary="Identify the originals of several uploaded images (multipart 'file' fields)",
        openapi_extra={"requestBody": _REFERENCES_BODY},
        response_model=None,
        responses=S.responses(S.ok(S.BatchBody, "One report (or error) per image"), *S.UPLOAD_ERRORS),
    )
    async def identify_batch(
        request: Request, k: int | None = Query(None, ge=1, le=1000, description="Matches per image")
    ) -> dict[str, Any]:
        svc = service()
        deadline = svc.deadline()
        uploads, _ = await _read_uploads(request, many=True)  # an empty part is reported in its own item
        stop = threading.Event()
        return await svc.run(
            _batch_json, svc.pipeline, uploads, svc.cfg.expose_paths, k, stop, deadline=deadline, abandon=stop.set
        )

    @app.post(
        "/v1/explain",
        summary="Explain the match of two uploaded images (scores, similarity map, SIFT)",
        openapi_extra={"requestBody": _EXPLAIN_BODY},
        response_class=Response,
        responses=S.responses(S.EXPLAIN_OK, *S.UPLOAD_ERRORS),
    )
    async def explain(
        request: Request,
        format: str = Query(
            "json", pattern="^(json|png|html)$", description="json (numbers), png or html (the picture)"
        ),
    ) -> Response:
        svc = service()
        deadline = svc.deadline()
        query, reference = await _read_pair(request)
        body, media_type = await svc.run(_explain_body, svc.pipeline, query, reference, format, deadline=deadline)
        return Response(body, media_type=media_type)


def _info_json(svc: _Service, store_info: Any, capacity: Capacity) -> dict[str, Any]:
    from id2_plugin import __version__

    p, cfg = svc.pipeline, svc.cfg
    return {
        "version": __version__,
        "embedder": p.embedder.identity,
        "dim": p.embedder.dim,
        "k": p.k,
        "threshold": p.threshold,
        "store": _public_store_info(store_info.to_dict(), cfg.expose_paths),
        "writes_enabled": bool(cfg.token),
        "load": {"admitted": capacity.inflight, "workers_busy": svc.busy},
        "limits": {
            "max_upload_bytes": cfg.max_upload_bytes,
            "request_timeout_s": cfg.request_timeout_s,
            "max_concurrency": cfg.max_concurrency,
            "queue_size": cfg.queue_size,
        },
    }


def _public_store_info(info: dict[str, Any], expose_paths: bool) -> dict[str, Any]:
    if expose_paths:
        return info
    return dict(
        info, location=public_uri(str(info["location"])), extra=json.loads(redact_paths(json.dumps(info["extra"])))
    )


def _add_write_routes(app: FastAPI, service: Callable[[], _Service]) -> None:
    """Adding and removing references: bearer token only, one write at a time."""

    @app.post(
        "/v1/references",
        summary="Add one or more reference images (bearer token)",
        openapi_extra={"requestBody": _REFERENCES_BODY},
        response_model=None,
        dependencies=[Depends(_BEARER)],
        responses=S.responses(
            {
                **S.ok(S.ReferencesBody, "Nothing new: every upload was a duplicate"),
                **S.ok(S.ReferencesBody, "References added", 201),
            },
            401,
            403,
            *S.UPLOAD_ERRORS,
            s422=S.ErrorBody | S.ReferencesBody,
        ),
    )
    async def add_references(
        request: Request,
        uri: str | None = Query(None, description="URI recorded for a single uploaded image"),
        label: list[str] | None = Query(None, description="Label stored with every added reference (repeatable)"),
    ) -> JSONResponse:
        svc = service()
        deadline = svc.deadline()
        svc.check_token(request)
        uploads, form_labels = await _read_uploads(request, many=True)
        labels = tuple(form_labels or label or ())
        items = [
            Upload(data, uri if (uri and len(uploads) == 1) else f"upload:{name}", name=name) for name, data in uploads
        ]
        async with svc.write_lock:
            res = await svc.run(functools.partial(svc.pipeline.add_uploads, items, labels=labels), deadline=deadline)
        body = {
            "added": [
                {"id": rid, "sha256": rec.sha256, "uri": rec.uri if svc.cfg.expose_paths else public_uri(rec.uri)}
                for rid, rec in res.added
            ],
            "duplicates": res.duplicates,
            "errors": [{"name": name, "error": why} for name, why in res.failures],
        }
        if res.failures and not res.added and not res.duplicates:
            return JSONResponse(body, status_code=422)
        return JSONResponse(body, status_code=201 if res.added else 200)

    @app.delete(
        "/v1/references/{key:path}",
        summary="Remove a reference by id or sha256 (bearer token)",
        response_model=None,
        dependencies=[Depends(_BEARER)],
        responses=S.responses(S.ok(S.RemovedBody, "Removed"), 401, 403, 404, 422, 504),
    )
    async def remove_reference(key: str, request: Request) -> dict[str, Any]:
        svc = service()
        deadline = svc.deadline()
        svc.check_token(request)
        async with svc.write_lock:
            n = await svc.run(svc.store.remove, [key], deadline=deadline)
        if n == 0:
            raise HTTPException(404, f"no reference with id or sha256 {key!r}")
        return {"removed": n, "key": key}


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
        "http": bounded_protocol(head_timeout_s=cfg.upload_timeout_s, max_connections=max_connections(cfg)),
        "limit_concurrency": None,
        "timeout_keep_alive": 5,
    }


def max_connections(cfg: ServeConfig) -> int:
    """Connections kept open: every request the budgets can hold (uploads, workers, queue) plus headroom
    for the cheap reads and idle keep-alive connections (closed first when the budget is reached)."""
    return cfg.max_uploads + cfg.max_concurrency + cfg.queue_size + _CONNECTION_HEADROOM


def token_from_env(cfg: ServeConfig) -> ServeConfig:
    """``$ID2_SERVE_TOKEN`` wins over ``serve.token`` (keeps the secret out of files and process lists)."""
    env = os.environ.get("ID2_SERVE_TOKEN")
    return dataclasses.replace(cfg, token=env) if env else cfg
