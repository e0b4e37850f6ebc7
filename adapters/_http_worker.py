"""The HTTP service's runtime state and its worker pool: model work on threads, within each request's deadline.

Model work (decode, embed, search, store writes) runs in a pool of ``serve.max_concurrency`` threads. A
request that is not answered by its deadline (queueing included) gets 504; its worker slot is released
only when the abandoned computation actually ends, so timeouts cannot pile up threads. Reference writes
are serialised in-process by :attr:`Service.write_lock` (the store additionally takes its file lock, which
serialises writers across processes).
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from fastapi import HTTPException, Request

from id2_plugin.config import ServeConfig
from id2_plugin.pipeline import Pipeline

__all__ = ["Service"]

T = TypeVar("T")


class Service:
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
        await self._acquire(deadline)
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

    async def _acquire(self, deadline: float) -> None:
        """Take a worker slot; 504 when ``deadline`` passes first."""
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

    def check_token(self, request: Request) -> None:
        """401 unless the request carries the configured bearer token; 403 when none is configured."""
        token = self.cfg.token
        if not token:
            raise HTTPException(403, "writes are disabled: no serve.token is configured for this server")
        auth = request.headers.get("authorization", "")
        scheme, _, given = auth.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})
