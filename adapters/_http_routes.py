"""The HTTP service's routes: reads open to every client, reference writes behind the bearer token.

Each handler reads its request (:mod:`._http_uploads`), hands the model work to a worker within the
request's deadline (:mod:`._http_worker`) and answers what :mod:`._http_answers` builds; the statuses and
bodies each route declares in OpenAPI come from :mod:`._http_schema`.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPBearer

from id2_plugin.pipeline import Upload

from . import _http_schema as S
from ._http_admission import Capacity
from ._http_answers import batch_json, explain_body, info_json, references_json, report_json
from ._http_uploads import read_pair, read_uploads
from ._http_worker import Service

__all__ = ["add_identify_routes", "add_status_routes", "add_write_routes"]

#: declares the bearer scheme of the write routes in the spec; the token itself is checked by Service.check_token
_BEARER = HTTPBearer(auto_error=False, description="serve.token (or $ID2_SERVE_TOKEN)")


def add_status_routes(app: FastAPI, service: Callable[[], Service], capacity: Capacity) -> None:
    """``/healthz`` and ``/v1/info``: open to every client."""

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
        return info_json(svc, store_info, capacity)


def add_identify_routes(app: FastAPI, service: Callable[[], Service]) -> None:
    """``/v1/identify``, ``/v1/identify/batch`` and ``/v1/explain``: open to every client."""

    @app.post(
        "/v1/identify",
        summary="Identify the original of an uploaded image",
        openapi_extra={"requestBody": S.IMAGE_BODY},
        response_model=None,
        responses=S.responses(S.ok(S.ReportBody, "The origin report"), *S.UPLOAD_ERRORS),
    )
    async def identify(
        request: Request, k: int | None = Query(None, ge=1, le=1000, description="Matches to return (default match.k)")
    ) -> dict[str, Any]:
        svc = service()
        deadline = svc.deadline()
        uploads, _ = await read_uploads(request, many=False)
        name, data = uploads[0]
        if not data:
            raise HTTPException(422, "empty upload: send the image bytes")
        return await svc.run(report_json, svc.pipeline, data, name, svc.cfg.expose_paths, k, deadline=deadline)

    @app.post(
        "/v1/identify/batch",
        summary="Identify the originals of several uploaded images (multipart 'file' fields)",
        openapi_extra={"requestBody": S.REFERENCES_BODY},
        response_model=None,
        responses=S.responses(S.ok(S.BatchBody, "One report (or error) per image"), *S.UPLOAD_ERRORS),
    )
    async def identify_batch(
        request: Request, k: int | None = Query(None, ge=1, le=1000, description="Matches per image")
    ) -> dict[str, Any]:
        svc = service()
        deadline = svc.deadline()
        uploads, _ = await read_uploads(request, many=True)  # an empty part is reported in its own item
        stop = threading.Event()
        return await svc.run(
            batch_json, svc.pipeline, uploads, svc.cfg.expose_paths, k, stop, deadline=deadline, abandon=stop.set
        )

    @app.post(
        "/v1/explain",
        summary="Explain the match of two uploaded images (scores, similarity map, SIFT)",
        openapi_extra={"requestBody": S.EXPLAIN_BODY},
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
        query, reference = await read_pair(request)
        body, media_type = await svc.run(
            explain_body, svc.pipeline, query, reference, format, svc.cfg.expose_paths, deadline=deadline
        )
        return Response(body, media_type=media_type)


def add_write_routes(app: FastAPI, service: Callable[[], Service]) -> None:
    """Adding and removing references: bearer token only, one write at a time."""

    @app.post(
        "/v1/references",
        summary="Add one or more reference images (bearer token)",
        openapi_extra={"requestBody": S.REFERENCES_BODY},
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
        uploads, form_labels = await read_uploads(request, many=True)
        labels = tuple(form_labels or label or ())
        items = [
            Upload(data, uri if (uri and len(uploads) == 1) else f"upload:{name}", name=name) for name, data in uploads
        ]
        async with svc.write_lock:
            res = await svc.run(functools.partial(svc.pipeline.add_uploads, items, labels=labels), deadline=deadline)
        body = references_json(res, svc.cfg.expose_paths)
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
