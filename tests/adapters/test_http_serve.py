"""``id2-plugin serve`` started as users start it (a subprocess on 127.0.0.1, a free port) on a store made by
``id2-plugin index add``: writes to that existing store, connections that never finish a request, and a
batch holding an empty part."""

from __future__ import annotations

import hashlib
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

CLI = Path(sys.executable).with_name("id2-plugin")
TOKEN = "served-token"
#: seconds a client has to send a request head (and a body): short, so the test sees it enforced
HEAD_TIMEOUT_S = 2


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, photo_paths: list[Path], serve_cli) -> Iterator[str]:
    """A store of 3 photos made with ``index add``, then served without ``--create-store``."""
    root = tmp_path_factory.mktemp("served")
    config = root / "id2.yaml"
    # the 64 px raw latent: a store is made and queried in seconds
    config.write_text(
        "embedder:\n  input_size: 64\n  device: cpu\n  projection: none\n  allow_raw_latent: true\n"
        f"store:\n  path: {root / 'store'}\nserve:\n  head_timeout_s: {HEAD_TIMEOUT_S}\n"
    )
    args = ["--config", str(config)]
    subprocess.run(
        [str(CLI), *args, "index", "add", *map(str, photo_paths[:3])], check=True, timeout=300, capture_output=True
    )
    with serve_cli(args, [], token=TOKEN, log=root / "serve.log") as url:
        yield url


def test_references_are_added_to_an_existing_store(served: str, photo_paths, edited_copies) -> None:
    new = photo_paths[5]
    with httpx.Client(base_url=served, timeout=60) as client:
        assert client.get("/v1/info").json()["writes_enabled"] is True
        r = client.post(
            "/v1/references",
            files=[("file", (new.name, new.read_bytes()))],
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert r.status_code == 201, r.text
        assert [a["sha256"] for a in r.json()["added"]] == [_sha(new.read_bytes())]
        report = client.post("/v1/identify", content=edited_copies[new].read_bytes()).json()
    assert report["is_match"] and report["best"]["sha256"] == _sha(new.read_bytes())


def test_idle_and_half_sent_connections_do_not_lock_identify_out(served: str, photo_paths, edited_copies) -> None:
    """150 connections that send nothing (more than the 114 the service keeps open) and 10 that stop inside
    their request head: an identify is still answered, and a half-sent head is cut off once its time to send
    the head has passed."""
    port = int(served.rsplit(":", 1)[1])
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(150)]
    half = [socket.create_connection(("127.0.0.1", port)) for _ in range(10)]
    try:
        for s in half:
            s.sendall(b"POST /v1/identify HTTP/1.1\r\nHost: t\r\nContent-Type: image/jpeg\r\n")
        with httpx.Client(base_url=served, timeout=60) as client:
            r = client.post("/v1/identify", content=edited_copies[photo_paths[1]].read_bytes())
        assert r.status_code == 200, r.text
        assert r.json()["best"]["sha256"] == _sha(photo_paths[1].read_bytes())
        half[-1].settimeout(HEAD_TIMEOUT_S * 10)
        assert half[-1].recv(4096) == b""  # closed by the server, not answered
    finally:
        for s in idle + half:
            s.close()


def test_batch_reports_an_empty_part_in_its_own_item(served: str, photo_paths, edited_copies) -> None:
    files = [
        ("file", ("a.jpg", edited_copies[photo_paths[0]].read_bytes())),
        ("file", ("empty.jpg", b"")),
        ("file", ("c.jpg", edited_copies[photo_paths[2]].read_bytes())),
    ]
    with httpx.Client(base_url=served, timeout=60) as client:
        r = client.post("/v1/identify/batch", files=files)
    assert r.status_code == 200, r.text
    a, empty, c = r.json()["results"]
    assert a["best"]["sha256"] == _sha(photo_paths[0].read_bytes())
    assert empty["query"] == "empty.jpg" and "empty" in empty["error"]
    assert c["best"]["sha256"] == _sha(photo_paths[2].read_bytes())
