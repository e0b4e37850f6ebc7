"""Admission control of the HTTP service: the size limit, the bounded upload phase and the model's queue.

A request for model work (:data:`HEAVY`) is read whole, within the byte budget and the upload deadline,
holding one of ``serve.max_uploads`` upload slots, and only then admitted against ``serve.max_concurrency
+ serve.queue_size``; past either budget it is refused at once with 503 and ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import threading

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from id2_plugin.config import ServeConfig

from ._http_schema import error_response

#: Paths whose requests do model work: admitted against the concurrency + queue budget.
HEAVY = {("POST", "/v1/identify"), ("POST", "/v1/identify/batch"), ("POST", "/v1/references"), ("POST", "/v1/explain")}


class Capacity:
    """Admission control: ``running + waiting <= max_concurrency + queue_size``, counted per request."""

    def __init__(self, max_concurrency: int, queue_size: int) -> None:
        self.limit = max_concurrency + queue_size
        self.inflight = 0
        self._lock = threading.Lock()

    def try_enter(self) -> bool:
        with self._lock:
            if self.inflight >= self.limit:
                return False
            self.inflight += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self.inflight -= 1


class _Rejected(Exception):
    def __init__(self, status: int, message: str) -> None:
        self.status, self.message = status, message


class LimitsMiddleware:
    """Pure ASGI middleware: the size limit (413), then the whole body under its own deadline (408) in a
    bounded upload phase, and only then admission to the model's queue (503).

    Reading the body before admission means a client that trickles its upload holds an upload slot for at
    most ``upload_timeout_s``, never a worker or queue slot: slow clients cannot lock identify out.
    """

    def __init__(self, app: ASGIApp, capacity: Capacity, cfg: ServeConfig) -> None:
        self.app = app
        self.capacity = capacity
        self.max_bytes = cfg.max_upload_bytes
        self.upload_timeout_s = cfg.upload_timeout_s
        self.uploads = Capacity(cfg.max_uploads, 0)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        heavy = (scope["method"], scope["path"].rstrip("/")) in HEAVY
        try:
            self._check_declared_size(scope)
            if not heavy:
                await self.app(scope, self._counted(receive), send)
                return
            body = await self._upload(receive)
        except _Rejected as exc:
            await error_response(exc.status, exc.message)(scope, receive, send)
            return
        if not self.capacity.try_enter():
            await error_response(503, "server busy: all workers and queue slots are taken; retry later")(
                scope, receive, send
            )
            return
        try:
            await self.app(scope, _replay(body, receive), send)
        finally:
            self.capacity.leave()

    def _check_declared_size(self, scope: Scope) -> None:
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is None:
            return
        try:
            too_big = int(declared) > self.max_bytes
        except ValueError:
            raise _Rejected(400, "invalid Content-Length header") from None
        if too_big:
            raise _Rejected(413, f"upload exceeds the {self.max_bytes}-byte limit (serve.max_upload_bytes)")

    async def _upload(self, receive: Receive) -> bytes:
        """The whole body, within the byte budget and the upload deadline, holding one upload slot."""
        if not self.uploads.try_enter():
            raise _Rejected(503, "server busy: too many uploads in progress (serve.max_uploads); retry later")
        try:
            return await asyncio.wait_for(self._read_all(receive), timeout=self.upload_timeout_s)
        except asyncio.TimeoutError:
            raise _Rejected(
                408,
                f"upload too slow: the body did not arrive within {self.upload_timeout_s:g} s (serve.upload_timeout_s)",
            ) from None
        finally:
            self.uploads.leave()

    async def _read_all(self, receive: Receive) -> bytes:
        chunks, received = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Rejected(400, "client disconnected during the upload")
            body = message.get("body", b"")
            received += len(body)
            if received > self.max_bytes:
                raise _Rejected(413, f"upload exceeds the {self.max_bytes}-byte limit (serve.max_upload_bytes)")
            chunks.append(body)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _counted(self, receive: Receive) -> Receive:
        received = 0

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, f"upload exceeds the {self.max_bytes}-byte limit (serve.max_upload_bytes)")
            return message

        return counted_receive


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the app the buffered body once, then the real channel (for disconnects)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
