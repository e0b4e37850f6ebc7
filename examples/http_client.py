"""Example: run ``id2-plugin serve`` and use it over HTTP (add references, identify edited uploads).

Starts the real server in a subprocess on a free local port with a temporary store and a bearer token,
then talks to it with httpx, as a moderation service would.

Usage: ``python examples/http_client.py [--photos 4] [--projection default|none]``
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import httpx
from _common import shared_photos

from id2_plugin.testing import reupload_jpeg

TOKEN = "example-token"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=4)
    ap.add_argument("--projection", default="default")
    args = ap.parse_args()
    photos = shared_photos(args.photos + 1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "id2_plugin.cli",
            "serve",
            "--store",
            f"{tmp}/store",
            "--create-store",
            "--projection",
            args.projection,
            "--port",
            str(port),
            "--log-level",
            "warning",
        ]
        print("$ ID2_SERVE_TOKEN=... id2-plugin " + " ".join(cmd[3:]))
        server = subprocess.Popen(cmd, env=dict(os.environ, ID2_SERVE_TOKEN=TOKEN))
        url = f"http://127.0.0.1:{port}"
        try:
            while True:
                try:
                    if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    if server.poll() is not None:
                        sys.exit("the server exited")
                    time.sleep(0.5)
            with httpx.Client(base_url=url, timeout=120) as client:
                files = [("file", (p.name, p.read_bytes(), "image/jpeg")) for p in photos[:-1]]
                r = client.post("/v1/references", files=files, headers={"Authorization": f"Bearer {TOKEN}"})
                print("POST /v1/references ->", r.status_code, json.dumps(r.json())[:300])
                for p in photos[:-1]:
                    report = client.post("/v1/identify", content=reupload_jpeg(p)).json()
                    best = report["best"] or {}
                    print(
                        f"POST /v1/identify (edited {p.name}) -> {report['decision']} "
                        f"{best.get('uri')} score={best.get('score', float('nan')):.3f}"
                    )
                report = client.post("/v1/identify", content=photos[-1].read_bytes()).json()
                print(f"POST /v1/identify (unrelated {photos[-1].name}) -> {report['decision']}")
                bad = client.post("/v1/identify", content=b"not an image")
                print("POST /v1/identify (not an image) ->", bad.status_code, bad.json()["detail"])
                print("GET /v1/info ->", json.dumps(client.get("/v1/info").json()["store"]))
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
