"""The HTTP service agrees with its OpenAPI spec (schemathesis), and its upload path survives fuzzing.

Both run in-process (ASGI) against a small real store of real photos and the 64-px TAEF2 embedder, with
a small, seeded number of examples: a bounded run, well under a minute.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from id2_plugin.config import ServeConfig

TOKEN = "contract-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
#: bounds a hung example without timing the normal ones (a loaded 2-core machine is slow, not wrong)
BOUND = timedelta(seconds=30)


@pytest.fixture(scope="module")
def pipeline(small_embedder, photo_paths: list[Path], tmp_path_factory: pytest.TempPathFactory):
    """Three real photos in a fresh FAISS store: identify answers with real matches."""
    from id2_plugin.pipeline import Pipeline
    from id2_plugin.stores.faiss_store import FaissStore

    store = FaissStore(
        tmp_path_factory.mktemp("contract") / "store",
        embedder_identity=small_embedder.identity,
        dim=small_embedder.dim,
        create=True,
    )
    pipe = Pipeline(small_embedder, store, k=3, threshold=0.5)
    pipe.add_files(photo_paths[60:63])
    return pipe


def _app(pipeline: Any, **serve: Any) -> Any:
    from id2_plugin.adapters.http import create_app

    return create_app(pipeline, ServeConfig(token=TOKEN, max_upload_bytes=200_000, **serve))


@pytest.fixture(scope="module")
def api_schema(pipeline):
    return schemathesis.openapi.from_asgi("/openapi.json", _app(pipeline))


#: every operation of the spec (checked below, so a new route cannot go untested)
OPERATIONS = [
    ("GET", "/healthz"),
    ("GET", "/v1/info"),
    ("POST", "/v1/identify"),
    ("POST", "/v1/identify/batch"),
    ("POST", "/v1/explain"),
    ("POST", "/v1/references"),
    ("DELETE", "/v1/references/{key}"),
]


def _checks() -> list[Any]:
    """No 5xx, a declared status, a declared content type, a body matching its schema, writes refused
    without the token."""
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        ignored_auth,
        response_schema_conformance,
        status_code_conformance,
    )

    return [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
        ignored_auth,
    ]


def test_schemathesis_covers_every_operation(api_schema) -> None:
    found = {(op.ok().method.upper(), op.ok().path) for op in api_schema.get_all_operations()}
    assert found == set(OPERATIONS)


#: operations with parameters a request can break (the others have no invalid request to generate)
NEGATIVE = [op for op in OPERATIONS if op[1] not in ("/healthz", "/v1/info")]


@pytest.mark.parametrize(
    "method,path,mode", [(*op, "positive") for op in OPERATIONS] + [(*op, "negative") for op in NEGATIVE]
)
def test_service_answers_as_its_openapi_spec_says(api_schema, method: str, path: str, mode: str) -> None:
    """Schemathesis-generated requests (valid ones, and ones breaking the spec) against the in-process app."""
    from schemathesis import GenerationMode

    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=GenerationMode(mode)))
    @settings(max_examples=8, deadline=BOUND, derandomize=True, suppress_health_check=list(HealthCheck))
    def run(case: Any) -> None:
        case.call_and_validate(headers=AUTH, checks=_checks())

    run()


def test_the_spec_declares_every_error_and_one_error_shape(pipeline) -> None:
    spec = _app(pipeline).openapi()
    error = {"$ref": "#/components/schemas/ErrorBody"}
    ops = {(m.upper(), p): op for p, item in spec["paths"].items() for m, op in item.items()}
    want = {
        ("POST", "/v1/identify"): {"400", "408", "413", "422", "503", "504"},
        ("POST", "/v1/references"): {"400", "401", "403", "408", "413", "422", "503", "504"},
        ("DELETE", "/v1/references/{key}"): {"400", "401", "403", "404", "413", "422", "503", "504"},
        ("GET", "/v1/info"): {"400", "413", "503", "504"},
    }
    for key, statuses in want.items():
        responses = ops[key]["responses"]
        assert statuses <= set(responses), (key, set(responses))
        own_422 = key == ("POST", "/v1/references")  # its 422 may also be the add result (docs: HTTP)
        for status in sorted(statuses - ({"422"} if own_422 else set())):
            assert responses[status]["content"]["application/json"]["schema"] == error, (key, status)
    assert "HTTPValidationError" not in spec["components"]["schemas"]  # FastAPI's shape is never answered
    assert ops[("POST", "/v1/references")]["security"] == [{"HTTPBearer": []}]


# --------------------------------------------------------------------------------------- upload fuzzing
ROUTES = ["/v1/identify", "/v1/identify/batch", "/v1/references", "/v1/explain"]


@pytest.fixture(scope="module")
def client(pipeline):
    from starlette.testclient import TestClient

    app = _app(pipeline)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield app, c


@pytest.fixture(scope="module")
def photo_bytes(photo_paths) -> bytes:
    return photo_paths[61].read_bytes()


def _payloads(photo: bytes) -> st.SearchStrategy[bytes]:
    """Image-ish bytes: a real photo whole, truncated or with flipped bytes, image magic plus junk, noise."""
    truncated = st.integers(0, len(photo)).map(lambda n: photo[:n])
    flipped = st.tuples(st.integers(0, len(photo) - 1), st.integers(1, 255)).map(
        lambda t: photo[: t[0]] + bytes([photo[t[0]] ^ t[1]]) + photo[t[0] + 1 :]
    )
    magic = st.sampled_from([b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"RIFF\0\0\0\0WEBP", b"BM", b"II*\0"])
    return st.one_of(
        st.just(photo),
        truncated,
        flipped,
        st.tuples(magic, st.binary(max_size=300)).map(b"".join),
        st.binary(max_size=600),
    )


def _multipart(draw: Any, photo: bytes, route: str) -> tuple[bytes, str]:
    boundary = draw(st.sampled_from(["b0undary", "x" * 70, "-", "a b"]))
    names = ["file", "other", "label"] + (["query", "reference"] if route == "/v1/explain" else [])
    out = b""
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(names))
        head = f'Content-Disposition: form-data; name="{name}"'
        if draw(st.booleans()):
            head += f'; filename="{draw(st.sampled_from(["a.jpg", "../../etc/passwd", "", "x" * 300]))}"'
            head += f"\r\nContent-Type: {draw(st.sampled_from(['image/jpeg', 'text/plain', 'application/x-evil']))}"
        out += f"--{boundary}\r\n{head}\r\n\r\n".encode() + draw(_payloads(photo)) + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    if draw(st.booleans()):
        out = out[: draw(st.integers(0, len(out)))]  # a body cut anywhere
    ctype = draw(
        st.sampled_from(
            [f"multipart/form-data; boundary={boundary}", "multipart/form-data", "multipart/form-data; boundary=other"]
        )
    )
    return out, ctype


@st.composite
def uploads(draw: Any, photo: bytes) -> dict[str, Any]:
    route = draw(st.sampled_from(ROUTES))
    if draw(st.booleans()):
        body, ctype = _multipart(draw, photo, route)
    else:
        body = draw(_payloads(photo))
        ctype = draw(st.sampled_from(["image/jpeg", "application/octet-stream", "text/plain", "application/json", ""]))
    headers = {"Content-Type": ctype} if ctype else {}
    declared = draw(st.sampled_from([None, "huge", "junk", "short"]))
    if declared == "huge":
        headers["Content-Length"] = str(10**12)
    elif declared == "junk":
        headers["Content-Length"] = "12abc"
    elif declared == "short":
        headers["Content-Length"] = str(max(len(body) // 2, 0))
    if route == "/v1/references" and draw(st.booleans()):
        headers.update(AUTH)
    return {"route": route, "body": body, "headers": headers}


def _documented(spec: dict[str, Any], route: str) -> set[int]:
    return {int(s) for s in spec["paths"][route]["post"]["responses"]}


def test_fuzzed_uploads_get_documented_statuses_and_bodies(client, photo_bytes) -> None:
    from id2_plugin.adapters import _http_schema as S

    app, c = client
    spec = app.openapi()
    bodies = {"/v1/identify": S.ReportBody, "/v1/identify/batch": S.BatchBody, "/v1/references": S.ReferencesBody}
    seen: set[tuple[str, int]] = set()

    @given(uploads(photo_bytes))
    @settings(max_examples=80, deadline=BOUND, derandomize=True, suppress_health_check=list(HealthCheck))
    def one(req: dict[str, Any]) -> None:
        r = c.post(req["route"], content=req["body"], headers=req["headers"])
        assert r.status_code in _documented(spec, req["route"]), (r.status_code, r.text[:300], req["headers"])
        seen.add((req["route"], r.status_code))
        if r.status_code >= 400 and not (
            req["route"] == "/v1/references" and r.status_code == 422 and "added" in r.json()
        ):
            assert set(r.json()) == {"detail"} and isinstance(r.json()["detail"], str), r.text[:300]
        elif req["route"] in bodies:
            bodies[req["route"]].model_validate(r.json())
        elif r.headers["content-type"].startswith("application/json"):
            assert "scores" in r.json()

    one()
    statuses = {s for _, s in seen}
    assert {413, 400, 422} <= statuses and any(s < 300 for s in statuses), seen  # the fuzz reached every layer


def test_validation_errors_use_the_one_error_shape(client) -> None:
    _, c = client
    r = c.post("/v1/identify", params={"k": 0}, content=b"x")
    assert r.status_code == 422
    assert r.json() == {"detail": "invalid request: query k: Input should be greater than or equal to 1"}
    r = c.post("/v1/explain", params={"format": "gif"}, files={"query": b"a", "reference": b"b"})
    assert r.status_code == 422 and r.json()["detail"].startswith("invalid request: query format: String should match")
