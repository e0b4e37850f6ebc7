"""The HTTP service, served by a real uvicorn on 127.0.0.1 and called with httpx."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from id2_plugin.config import ServeConfig
from id2_plugin.pipeline import Pipeline
from id2_plugin.stores.faiss_store import FaissStore

TOKEN = "s3cret-token"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running(app, port: int | None = None, **uvicorn_options: object) -> Iterator[str]:
    """Run ``app`` with a real uvicorn server in a thread, set up as ``serve`` sets it up; yields the base URL."""
    import uvicorn

    from id2_plugin.adapters.http import server_options

    port = port or _free_port()
    options = {**server_options(app.state.serve_config), **uvicorn_options}
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", **options)
    )  # type: ignore[arg-type]
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextlib.contextmanager
def trickling(url: str, n: int) -> Iterator[list[socket.socket]]:
    """``n`` connections that sent a request head and one byte of a 100 kB body, and then nothing."""
    port = int(url.rsplit(":", 1)[1])
    head = (
        b"POST /v1/identify HTTP/1.1\r\nHost: t\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Length: 100000\r\n\r\nx"
    )
    slow = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
    try:
        for s in slow:
            s.sendall(head)
        time.sleep(0.3)  # the server has read every head
        yield slow
    finally:
        for s in slow:
            s.close()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture()
def pipeline(small_embedder, tmp_path: Path) -> Pipeline:
    store = FaissStore(
        tmp_path / "store", embedder_identity=small_embedder.identity, dim=small_embedder.dim, create=True
    )
    return Pipeline(small_embedder, store, k=3, threshold=0.5)


def _app(pipeline: Pipeline, **serve: object):
    from id2_plugin.adapters.http import create_app

    return create_app(pipeline, ServeConfig(**{"token": TOKEN, **serve}))  # type: ignore[arg-type]


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


def test_add_references_then_identify_edited_copies(pipeline, photo_paths, edited_copies) -> None:
    refs = photo_paths[:4]
    with running(_app(pipeline)) as url, httpx.Client(base_url=url, timeout=60) as client:
        files = [("file", (p.name, p.read_bytes(), "image/jpeg")) for p in refs]
        r = client.post("/v1/references", files=files, data={"label": ["originals"]}, headers=_auth())
        assert r.status_code == 201, r.text
        body = r.json()
        assert [a["sha256"] for a in body["added"]] == [_sha(p.read_bytes()) for p in refs]
        assert body["duplicates"] == [] and body["errors"] == []

        again = client.post("/v1/references", content=refs[0].read_bytes(), headers=_auth())
        assert again.status_code == 200 and again.json()["duplicates"] == [_sha(refs[0].read_bytes())]

        for i, p in enumerate(refs):
            data = edited_copies[p].read_bytes()
            if i % 2:  # both upload styles: raw body and multipart
                r = client.post("/v1/identify", content=data, headers={"Content-Type": "image/jpeg"})
            else:
                r = client.post("/v1/identify", files={"file": ("query.jpg", data, "image/jpeg")})
            assert r.status_code == 200, r.text
            report = r.json()
            assert report["decision"] == "match"
            assert report["best"]["sha256"] == _sha(p.read_bytes())
            assert report["best"]["labels"] == ["originals"]
            assert report["embedder"] == pipeline.context.embedder.identity

        unrelated = client.post("/v1/identify", content=photo_paths[40].read_bytes())
        assert unrelated.status_code == 200 and unrelated.json()["decision"] == "no_match"

        info = client.get("/v1/info").json()
        assert info["store"]["count"] == 4 and info["dim"] == pipeline.context.embedder.dim
        assert info["writes_enabled"] is True and info["load"] == {"admitted": 0, "workers_busy": 0}
        assert client.get("/healthz").json()["status"] == "ok"
        schema = client.get("/openapi.json").json()
        assert {"/v1/identify", "/v1/references", "/v1/references/{key}", "/healthz", "/v1/info"} <= set(
            schema["paths"]
        )
        assert "multipart/form-data" in schema["paths"]["/v1/identify"]["post"]["requestBody"]["content"]


def test_a_served_pipeline_keeps_its_match_settings(small_embedder, photo_paths, tmp_path: Path) -> None:
    """match.windows holds when the app is given a Pipeline: with ``off`` an unmatched query gets no
    second look at its windows, with ``auto`` it does."""

    store = FaissStore(
        tmp_path / "store", embedder_identity=small_embedder.identity, dim=small_embedder.dim, create=True
    )
    Pipeline(small_embedder, store).add_files([photo_paths[0]])
    for windows in ("off", "auto"):
        served = Pipeline(small_embedder, store, k=3, threshold=0.99, windows=windows)
        with running(_app(served)) as url, httpx.Client(base_url=url, timeout=60) as client:
            report = client.post("/v1/identify", content=photo_paths[40].read_bytes()).json()
        assert report["decision"] == "no_match"
        assert ("windows" in report["timings_ms"]) is (windows == "auto"), (windows, report["timings_ms"])


def test_bad_media_gets_a_clear_422(pipeline) -> None:
    with running(_app(pipeline)) as url, httpx.Client(base_url=url, timeout=60) as client:
        r = client.post("/v1/identify", content=b"GIF89a this is not really an image")
        assert r.status_code == 422
        assert "not a usable image" in r.json()["detail"]
        assert client.post("/v1/identify", content=b"").status_code == 422
        r = client.post("/v1/identify", files={"other": ("x.txt", b"abc", "text/plain")})
        assert r.status_code == 422 and "'file'" in r.json()["detail"]
        r = client.post(
            "/v1/references", files=[("file", ("bad.jpg", b"\xff\xd8\xff broken", "image/jpeg"))], headers=_auth()
        )
        assert r.status_code == 422 and r.json()["errors"][0]["name"] == "bad.jpg"


def test_responses_name_no_server_paths_unless_configured(pipeline, photo_paths) -> None:

    ctx = pipeline.context
    Pipeline(ctx.embedder, ctx.store).add_files([photo_paths[3]])
    data = photo_paths[3].read_bytes()
    server_dir = str(photo_paths[3].resolve().parent)
    for expose in (False, True):
        with running(_app(pipeline, expose_paths=expose)) as url, httpx.Client(base_url=url, timeout=60) as c:
            best = c.post("/v1/identify", content=data).json()["best"]
            info = c.get("/v1/info").json()
        shown = str(best["uri"]) + str(info["store"])
        assert (server_dir in shown) is expose, shown
        assert best["uri"].endswith(photo_paths[3].name)


def test_batch_identify_k_and_keys_with_slashes(pipeline, photo_paths) -> None:

    ctx = pipeline.context
    Pipeline(ctx.embedder, ctx.store).add_files(photo_paths[5:8])
    files = [("file", (p.name, p.read_bytes(), "image/jpeg")) for p in photo_paths[5:7]]
    files.append(("file", ("bad.jpg", b"\xff\xd8 not an image", "image/jpeg")))
    with running(_app(pipeline)) as url, httpx.Client(base_url=url, timeout=120) as c:
        r = c.post("/v1/identify/batch", params={"k": 2}, files=files)
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert [x["query"] for x in results] == [photo_paths[5].name, photo_paths[6].name, "bad.jpg"]
        assert [x["best"]["uri"] for x in results[:2]] == [photo_paths[5].name, photo_paths[6].name]
        assert all(len(x["matches"]) == 2 for x in results[:2]) and "not a usable image" in results[2]["error"]
        one = c.post("/v1/identify", params={"k": 1}, content=photo_paths[7].read_bytes()).json()
        assert len(one["matches"]) == 1 and one["best"]["uri"] == photo_paths[7].name
        gone = c.delete("/v1/references/a/b", headers=_auth())
        assert gone.status_code == 404 and "no reference with id or sha256 'a/b'" in gone.json()["detail"]


def test_upload_limit_413_declared_and_streamed(pipeline, photo_paths) -> None:
    data = photo_paths[0].read_bytes()
    limit = len(data) // 2
    with running(_app(pipeline, max_upload_bytes=limit)) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert client.post("/v1/identify", content=data).status_code == 413

        def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer, counted while streaming
            for i in range(0, len(data), 4096):
                yield data[i : i + 4096]

        r = client.post("/v1/identify", content=chunks())
        assert r.status_code == 413 and "limit" in r.json()["detail"]
        assert client.post("/v1/identify", content=data[: limit - 10]).status_code == 422  # under the limit


def test_writes_need_the_token_and_are_off_without_one(pipeline, photo_paths) -> None:
    from id2_plugin.adapters.http import create_app

    data = photo_paths[5].read_bytes()
    with running(create_app(pipeline, ServeConfig(token=None))) as url, httpx.Client(base_url=url, timeout=60) as c:
        assert c.post("/v1/references", content=data, headers=_auth()).status_code == 403
        assert c.delete(f"/v1/references/{_sha(data)}", headers=_auth()).status_code == 403
        assert c.get("/v1/info").json()["writes_enabled"] is False
    with running(_app(pipeline)) as url, httpx.Client(base_url=url, timeout=60) as c:
        assert c.post("/v1/references", content=data).status_code == 401
        bad = c.post("/v1/references", content=data, headers={"Authorization": "Bearer wrong"})
        assert bad.status_code == 401 and bad.headers["www-authenticate"] == "Bearer"
        r = c.post("/v1/references", content=data, params={"uri": "s3://bucket/a.jpg", "label": "x"}, headers=_auth())
        assert r.status_code == 201 and r.json()["added"][0]["uri"] == "s3://bucket/a.jpg"
        rid = r.json()["added"][0]["id"]
        assert c.delete(f"/v1/references/{rid}", headers=_auth()).json()["removed"] == 1
        assert c.delete(f"/v1/references/{rid}", headers=_auth()).status_code == 404
        assert pipeline.context.store.info().count == 0


def test_full_queue_gets_503_and_timeouts_504(pipeline, photo_paths) -> None:
    from id2_plugin.adapters._http_admission import LimitsMiddleware

    data = photo_paths[0].read_bytes()
    app = _app(pipeline, max_concurrency=1, queue_size=1)
    capacity = next(m.kwargs["capacity"] for m in app.user_middleware if m.cls is LimitsMiddleware)
    with running(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert capacity.try_enter() and capacity.try_enter()  # two requests' worth: workers + queue taken
        try:
            r = client.post("/v1/identify", content=data)
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            assert client.get("/healthz").status_code == 200  # read-only endpoints are not admitted against it
        finally:
            capacity.leave()
            capacity.leave()
        assert client.post("/v1/identify", content=data).status_code == 200

    # A deadline shorter than any forward pass: 504, and the worker comes back once the thread ends.
    slow = _app(pipeline, max_concurrency=1, queue_size=4, request_timeout_s=0.001)
    with running(slow) as url, httpx.Client(base_url=url, timeout=60) as client:
        r = client.post("/v1/identify", content=data)
        assert r.status_code == 504 and "timed out" in r.json()["detail"]
    fresh = _app(pipeline, max_concurrency=1, queue_size=0)
    with running(fresh) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert client.post("/v1/identify", content=data).status_code == 200


def test_a_batch_given_up_at_its_deadline_stops_computing(pipeline, photo_paths, monkeypatch) -> None:
    """A batch answered 504 stops between batches instead of decoding and embedding every image for nobody."""
    embedder = pipeline.context.embedder
    decoded = []
    normalise = embedder.normalise
    monkeypatch.setattr(embedder, "normalise", lambda media: (decoded.append(1), normalise(media))[1])
    files = [("file", (f"{i}.jpg", photo_paths[i % 8].read_bytes(), "image/jpeg")) for i in range(300)]
    with running(_app(pipeline, max_concurrency=1, queue_size=0, request_timeout_s=0.5)) as url:
        with httpx.Client(base_url=url, timeout=120) as client:
            assert client.post("/v1/identify/batch", files=files).status_code == 504
    deadline = time.monotonic() + 300  # the abandoned computation ends, however far it goes
    while any(t.name.startswith("id2-http") for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert 0 < len(decoded) < len(files)


def test_trickling_uploads_do_not_lock_identify_out(pipeline, photo_paths) -> None:
    """18 clients sending a body byte by byte hold no worker or queue slot (3 here): identify still answers,
    and each trickler is cut off with 408 at the upload deadline."""
    app = _app(pipeline, max_concurrency=1, queue_size=2, upload_timeout_s=2.0)
    data = photo_paths[0].read_bytes()
    with running(app) as url, trickling(url, 18) as slow:
        with httpx.Client(base_url=url, timeout=60) as c:
            r = c.post("/v1/identify", content=data, headers={"content-type": "application/octet-stream"})
        assert r.status_code == 200, r.text
        slow[0].settimeout(15)
        status_line = slow[0].recv(4096).split(b"\r\n")[0]
        assert b" 408 " in status_line, status_line


def test_connections_all_inside_requests_get_a_json_503_and_bad_requests_a_json_400(pipeline) -> None:
    """3 connections allowed, all inside a request (bodies still arriving): a 4th client is told to retry
    in the documented shape; a malformed request is answered in that shape too."""
    from id2_plugin.adapters._http_connections import bounded_protocol

    protocol = bounded_protocol(head_timeout_s=30, max_connections=3)
    with running(_app(pipeline, upload_timeout_s=30.0), http=protocol) as url:
        with trickling(url, 3), httpx.Client(base_url=url, timeout=60) as c:
            r = c.get("/healthz")
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        assert "retry later" in r.json()["detail"]
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.settimeout(30)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost t\r\n\r\n")
            answer = b"".join(iter(lambda: s.recv(65536), b""))  # until the server closes
        head_part, _, body = answer.partition(b"\r\n\r\n")
        assert b" 400 " in head_part.split(b"\r\n")[0] and b"application/json" in head_part
        assert "detail" in json.loads(body)


def test_head_timeout_and_idle_connection_allowance_come_from_the_serve_config(pipeline) -> None:
    """Budgets of 1 upload + 1 worker + 0 queue + ``idle_connections`` 1 = 3 connections: a 4th idle client
    closes the longest-waiting one, and a client that sends no head is closed after ``head_timeout_s``."""
    app = _app(pipeline, max_uploads=1, max_concurrency=1, queue_size=0, idle_connections=1, head_timeout_s=1.0)
    with running(app) as url:
        port = int(url.rsplit(":", 1)[1])
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        time.sleep(0.3)
        newest = socket.create_connection(("127.0.0.1", port))
        idle[0].settimeout(5)
        assert idle[0].recv(1) == b"", "the longest-waiting idle connection was not closed"
        started = time.monotonic()
        newest.settimeout(10)
        assert newest.recv(1) == b"", "a connection that sent no request head was kept open"
        assert 0.5 < time.monotonic() - started < 5
        for s in [*idle, newest]:
            s.close()


def test_load_200_requests_8_concurrent_and_no_lost_writes(pipeline, photo_paths, edited_copies) -> None:
    """8 clients: 16 concurrent reference uploads all land; then 200 identifications, none fails."""
    refs = photo_paths[:16]
    app = _app(pipeline, max_concurrency=2, queue_size=8)

    async def scenario(url: str) -> tuple[list[httpx.Response], list[httpx.Response]]:
        sem = asyncio.Semaphore(8)
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:

            async def call(method: str, path: str, **kw: object) -> httpx.Response:
                async with sem:
                    return await client.request(method, path, **kw)  # type: ignore[arg-type]

            writes = await asyncio.gather(
                *(call("POST", "/v1/references", content=p.read_bytes(), headers=_auth()) for p in refs)
            )
            queries = [edited_copies[refs[i % len(refs)]].read_bytes() for i in range(200)]
            reads = await asyncio.gather(*(call("POST", "/v1/identify", content=q) for q in queries))
            return list(writes), list(reads)

    with running(app) as url:
        writes, reads = asyncio.run(scenario(url))
    assert [w.status_code for w in writes] == [201] * len(refs), [w.text for w in writes if w.status_code != 201]
    store = pipeline.context.store
    assert store.info().count == len(refs)
    assert store.contains([_sha(p.read_bytes()) for p in refs]) == [True] * len(refs)
    statuses = [r.status_code for r in reads]
    assert statuses == [200] * 200, {s: statuses.count(s) for s in set(statuses)}
    expected = [_sha(refs[i % len(refs)].read_bytes()) for i in range(200)]
    assert [r.json()["best"]["sha256"] for r in reads] == expected


@pytest.mark.slow
def test_cli_serve_subprocess(tmp_path: Path, photo_paths, edited_copies, serve_cli) -> None:
    """``id2-plugin serve`` as a user runs it: a store created on start, filled and queried over HTTP."""
    log = tmp_path / "serve.log"
    args = [
        "--set",
        "embedder.input_size=64",
        "--set",
        "embedder.device=cpu",
        "--set",
        "embedder.allow_raw_latent=true",
    ]
    serve_args = ["--store", str(tmp_path / "store"), "--create-store", "--projection", "none"]
    with serve_cli(args, serve_args, token=TOKEN, log=log) as url, httpx.Client(base_url=url, timeout=60) as client:
        r = client.post(
            "/v1/references", files=[("file", (p.name, p.read_bytes())) for p in photo_paths[:3]], headers=_auth()
        )
        assert r.status_code == 201 and len(r.json()["added"]) == 3
        report = client.post("/v1/identify", content=edited_copies[photo_paths[2]].read_bytes()).json()
        assert report["is_match"] and report["best"]["sha256"] == _sha(photo_paths[2].read_bytes())
    err = log.read_text()
    assert "serving 0 references" in err and "writes enabled" in err


def test_explain_route_returns_scores_and_the_picture_in_memory(
    pipeline, photo_paths, edited_copies, tmp_path: Path
) -> None:
    import io

    from PIL import Image

    ref, other = photo_paths[2], photo_paths[9]
    pair = {"query": edited_copies[ref].read_bytes(), "reference": ref.read_bytes()}
    before = set(os.listdir(tmp_path))
    with running(_app(pipeline)) as url, httpx.Client(base_url=url, timeout=120) as client:
        same = client.post("/v1/explain", files=pair)
        unrelated = client.post("/v1/explain", files={"query": other.read_bytes(), "reference": ref.read_bytes()})
        png = client.post("/v1/explain", params={"format": "png"}, files=pair)
        missing = client.post("/v1/explain", files={"query": pair["query"]})
        bad_format = client.post("/v1/explain", params={"format": "gif"}, files=pair)
    assert same.status_code == 200 and unrelated.status_code == 200, same.text
    doc, far = same.json(), unrelated.json()
    assert set(doc["scores"]) == {"vae_raw"} and doc["score"] > far["score"] + 0.1
    assert doc["cell_similarity"]["shape"] == [8, 8] and isinstance(doc["local_features"]["inliers"], int)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    img = Image.open(io.BytesIO(png.content))
    assert img.size[0] > 900 and float(img.text["score.vae_raw"]) == pytest.approx(doc["scores"]["vae_raw"], abs=1e-6)
    assert json.loads(img.text["id2-explain"])["out"] is None
    assert missing.status_code == 422 and bad_format.status_code == 422
    assert set(os.listdir(tmp_path)) == before  # only the test's own store folder: nothing written by explain


def test_docs_and_redoc_load_only_local_assets(pipeline) -> None:
    """Offline machines: /docs and /redoc reference no CDN, and every asset they name is served here."""
    import re

    with running(_app(pipeline)) as url, httpx.Client(base_url=url, timeout=60) as client:
        for page in ("/docs", "/redoc"):
            r = client.get(page)
            assert r.status_code == 200 and "text/html" in r.headers["content-type"]
            urls = re.findall(r"""(?:src|href)=["']([^"']+)["']|url: *["']([^"']+)["']""", r.text)
            urls = [a or b for a, b in urls]
            assert urls and not [u for u in urls if re.match(r"(https?:)?//", u)], (page, urls)
            assert "cdn.jsdelivr" not in r.text and "fonts.googleapis" not in r.text
            for asset in urls:
                got = client.get(asset)
                assert got.status_code == 200 and len(got.content) > 100, (page, asset, got.status_code)
        assert any(u.endswith("swagger-ui-bundle.js") for u in re.findall(r'src="([^"]+)"', client.get("/docs").text))
