"""Connections of the HTTP service: how long a client may take to send a request head, how many
connections stay open, and what a refused client is told.

uvicorn counts idle connections against its ``limit_concurrency`` and gives a connection that never
finishes its request head unlimited time, so 51 silent sockets locked every client out, and its refusal
was plain text. This is uvicorn's h11 protocol, bounded:

* a request head must arrive within ``head_timeout_s`` of the connection opening or of the previous
  response, else the connection is closed (a body has its own deadline, in :mod:`._http_admission`);
* at most ``max_connections`` are open: a new connection past that closes the longest-waiting one that is
  not inside a request, so idle or half-sent connections can never keep a real request out;
* when every open connection is inside a request, the newcomer's request gets 503 with ``Retry-After`` in
  the documented ``{"detail": ...}`` shape; a malformed request gets 400 in that shape too.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from ._http_schema import error_response

_BUSY = "server busy: every connection is inside a request; retry later"


async def _refuse_busy(scope: Any, receive: Any, send: Any) -> None:
    await error_response(503, _BUSY, {"Connection": "close"})(scope, receive, send)


class _BoundedH11(H11Protocol):
    head_timeout_s: float = 10.0
    max_connections: int = 256

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._waiting_since = 0.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_head()
        if len(self.connections) > self.max_connections and not self._close_longest_waiting():
            self.app = _refuse_busy

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._await_head()

    def send_400_response(self, msg: str) -> None:
        body = json.dumps({"detail": msg}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        for event in (
            h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
            h11.Data(data=body),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event) or b"")
        self.transport.close()

    def waiting(self) -> bool:
        """Not inside a request: no complete request head since the connection opened or the last response."""
        return (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing()

    def _await_head(self) -> None:
        self._stop_head_timer()
        self._waiting_since = self.loop.time()
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.waiting():
            self.transport.close()

    def _close_longest_waiting(self) -> bool:
        waiting = [c for c in self.connections if c is not self and isinstance(c, _BoundedH11) and c.waiting()]
        if not waiting:
            return False
        min(waiting, key=lambda c: c._waiting_since).transport.close()
        return True


def bounded_protocol(*, head_timeout_s: float, max_connections: int) -> type[H11Protocol]:
    """uvicorn's ``http=`` protocol class with these bounds (see the module docstring)."""
    return type(
        "BoundedH11Protocol", (_BoundedH11,), {"head_timeout_s": head_timeout_s, "max_connections": max_connections}
    )
