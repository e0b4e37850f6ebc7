"""The HTTP service's OpenAPI description: its JSON bodies as pydantic models, its request bodies, and the
responses each route declares.

The handlers return plain dicts (``OriginReport.to_dict`` and friends); these models only describe them
in the spec. ``tests/adapters/test_http_contract.py`` runs schemathesis against the spec to keep the two
in agreement: every status a route answers with is declared, and every body matches its schema.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field
from starlette.responses import JSONResponse


class ErrorBody(BaseModel):
    """Every error answer (4xx, 5xx), including request validation: one line saying what went wrong."""

    detail: str = Field(description="What went wrong; server paths are cut to '.../name' unless serve.expose_paths")


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """An :class:`ErrorBody` answer; a 503 always says when to retry (``Retry-After``)."""
    if status == 503:
        headers = {"Retry-After": "1", **(headers or {})}
    return JSONResponse({"detail": message}, status_code=status, headers=headers)


class MatchBody(BaseModel):
    reference_id: str
    uri: str = Field(description="The uri the reference was added with (a server file path: its file name)")
    score: float = Field(
        description="What the threshold decides on: the calibrated decision score in [0, 1] "
        "(score_kind 'decision'), else the cosine in [-1, 1]"
    )
    rank: int
    sha256: str
    labels: list[str]
    signals: dict[str, float] = Field(description="Each signal's own cosine for a fused embedding, else empty")
    orientation: str | None = Field(
        None, description="The query variant that scored best, e.g. 'rot90'; absent when upright"
    )
    window: str | None = Field(
        None,
        description="The query window that scored best, e.g. 'r0c1' (row, column of the 3 x 3 "
        "grid; match.windows); absent when the whole image did",
    )
    cosine: float | None = Field(
        None, description="The store's (fused) cosine when score is a decision score; absent when score is that cosine"
    )


class ReportBody(BaseModel):
    query: str | None
    decision: Literal["match", "no_match"]
    is_match: bool
    threshold: float
    score_kind: Literal["decision", "cosine"] = Field(
        description="What score and threshold are: the decision model's calibrated score, or the store's cosine"
    )
    false_match_rate: float | None = Field(
        description="Calibrated bound on the share of unrelated queries "
        "reported as a match at this store's size; null when "
        "uncalibrated"
    )
    best: MatchBody | None
    matches: list[MatchBody]
    embedder: str
    projection: str | None
    timings_ms: dict[str, float]


class BatchItemError(BaseModel):
    query: str
    error: str


class BatchBody(BaseModel):
    results: list[ReportBody | BatchItemError] = Field(description="One per uploaded file, in order")


class AddedBody(BaseModel):
    id: str
    sha256: str
    uri: str


class AddFailure(BaseModel):
    name: str
    error: str


class ReferencesBody(BaseModel):
    added: list[AddedBody]
    duplicates: list[str] = Field(description="sha256 of uploads already stored (or repeated in the request)")
    errors: list[AddFailure]


class RemovedBody(BaseModel):
    removed: int
    key: str


class HealthBody(BaseModel):
    status: Literal["ok"]
    uptime_s: float


class InfoBody(BaseModel):
    version: str
    embedder: str
    dim: int
    k: int
    threshold: float
    store: dict[str, Any]
    writes_enabled: bool
    load: dict[str, int]
    limits: dict[str, Any]


#: why each error status happens (the OpenAPI descriptions)
_WHY = {
    400: "Malformed request: an invalid Content-Length, a malformed multipart body, or the client went away",
    401: "Missing or wrong bearer token",
    403: "Writes are disabled: no serve.token is configured",
    404: "No reference with that id or sha256",
    408: "The body did not arrive within serve.upload_timeout_s",
    413: "The body exceeds serve.max_upload_bytes (declared or streamed)",
    422: "Invalid request: not a usable image, a missing or empty upload field, or a query parameter out of range",
    503: "The model is still loading, the reference store is unavailable, all workers and queue slots "
    "(or upload slots) are taken, or every connection is inside a request; retry after Retry-After",
    504: "Not answered within serve.request_timeout_s",
}
_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying (when the server is busy)",
        "schema": {"type": "string"},
    }
}

#: statuses every route can answer with (the size check runs before routing)
_COMMON = (400, 413, 503)
#: and those of the routes that read an upload and run the model
UPLOAD_ERRORS = (408, 422, 504)


def _error(status: int, model: Any = ErrorBody) -> dict[str, Any]:
    out: dict[str, Any] = {"model": model, "description": _WHY[status]}
    if status == 503:
        out["headers"] = _RETRY_AFTER
    return out


def responses(ok: dict[int, dict[str, Any]], *statuses: int, **models: Any) -> dict[int | str, dict[str, Any]]:
    """``responses=`` of a route: its success answers ``ok`` plus the common and the given error statuses.

    ``models`` overrides an error's body model by status (``s422=Model``).
    """
    out: dict[int | str, dict[str, Any]] = dict(ok)
    for status in sorted({*_COMMON, *statuses}):
        out[status] = _error(status, models.get(f"s{status}", ErrorBody))
    return out


def ok(model: Any, description: str, status: int = 200) -> dict[int, dict[str, Any]]:
    return {status: {"model": model, "description": description}}


EXPLAIN_OK = {
    200: {
        "description": "The explanation: JSON numbers, or with ?format=png|html the picture",
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "text/html": {"schema": {"type": "string"}},
        },
    }
}


# Request bodies: the handlers read the raw request (multipart or not), so FastAPI cannot infer these.
_BINARY = {"type": "string", "format": "binary"}
IMAGE_BODY = {
    "content": {
        "multipart/form-data": {
            "schema": {"type": "object", "properties": {"file": _BINARY}, "required": ["file"]},
        },
        "application/octet-stream": {"schema": _BINARY},
        "image/*": {"schema": _BINARY},
    },
    "required": True,
}
EXPLAIN_BODY = {
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"query": _BINARY, "reference": _BINARY},
                "required": ["query", "reference"],
            }
        },
    },
    "required": True,
}
REFERENCES_BODY = {
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {
                    "file": {"type": "array", "items": _BINARY},
                    "label": {"type": "array", "items": {"type": "string"}},
                },
                "required": ["file"],
            }
        },
        "application/octet-stream": {"schema": _BINARY},
        "image/*": {"schema": _BINARY},
    },
    "required": True,
}
