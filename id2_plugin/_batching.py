"""Decoding overlapped with the model: the one batching component every bulk use case runs through.

:func:`pipelined` reads a source in a feeder thread, prepares each item (decode + normalise) in a small
thread pool while the caller's thread runs the model on the previous batch, and yields one
:class:`Done` per item in input order. Threads suffice: Pillow, OpenCV and FFmpeg decode outside the
GIL, and the model itself already spreads over every core.

Memory is bounded: at most ``depth`` prepared items wait ahead of the caller, plus the batch being run.
A :class:`~id2_plugin.errors.MediaError` from ``prepare`` becomes that item's ``error`` (the stream goes
on); any other exception, from ``prepare`` or the source, is raised at that item's position.

:class:`BatchSizer` holds the batch size: fixed, or ``auto``, where the first full batches try a few
sizes once each (after a warm-up batch) and the fastest per item is kept from then on.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .errors import ConfigError, MediaError

T = TypeVar("T")
AUTO = "auto"
#: batch sizes ``auto`` tries at a 256 px input, smallest first (the first also warms the model up)
AUTO_CANDIDATES = (4, 8, 16)
_POLL_S = 0.05  # how often a blocked feeder checks that the caller is still reading


@dataclass
class Done(Generic[T]):
    """One item's outcome: the model's ``output`` for it, or the ``error`` that kept it from the model."""

    index: int
    item: T
    output: Any = None
    error: MediaError | None = None


def check_batch_size(value: int | str, key: str = "embedder.batch_size") -> None:
    """Raise :class:`ConfigError` unless ``value`` is an int >= 1 or ``auto``."""
    if value == AUTO:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key}={value!r}: expected an integer >= 1 or 'auto'")


class BatchSizer:
    """The batch size of a stream, fixed or tuned (``auto``); share one across calls to tune once.

    ``auto`` tries each of ``candidates`` (capped at ``max_size``) on one full batch, after a warm-up batch
    at the smallest, and keeps the one with the least model time per item. Thread-safe.
    """

    def __init__(
        self, requested: int | str, *, max_size: int = max(AUTO_CANDIDATES), candidates: Sequence[int] = AUTO_CANDIDATES
    ) -> None:
        check_batch_size(requested)
        self.auto = requested == AUTO
        tried = sorted({min(c, max_size) for c in candidates}) or [max_size]
        self._plan = [tried[0], *tried] if self.auto else []
        self._size = int(requested) if not self.auto else tried[0]
        self._rates: dict[int, float] = {}
        self._lock = threading.Lock()

    @property
    def max_size(self) -> int:
        """The largest batch this sizer will ask for."""
        return max([self._size, *self._plan])

    @property
    def chosen(self) -> int | None:
        """The size in use once fixed or tuned; None while ``auto`` is still measuring."""
        return None if self._plan else self._size

    def next_size(self) -> int:
        with self._lock:
            return self._plan[0] if self._plan else self._size

    def record(self, size: int, n: int, seconds: float) -> None:
        """A batch planned at ``size`` ran ``n`` items in ``seconds``; only full planned batches count."""
        with self._lock:
            if not self._plan or n != size or self._plan[0] != size:
                return
            warm_up = len(self._plan) > len(set(self._plan))
            self._plan.pop(0)
            if not warm_up:
                self._rates[size] = seconds / n
            if not self._plan:
                self._size = min(self._rates, key=self._rates.__getitem__)


def auto_max_batch(input_size: int, base: int = max(AUTO_CANDIDATES)) -> int:
    """Largest batch ``auto`` tries: ``base`` at 256 px, fewer for larger inputs (activations grow with area)."""
    return max(1, int(base * (256 / max(input_size, 1)) ** 2))


def embedder_batching(embedder: Any, batch_size: int | str | None = None) -> BatchSizer:
    """The batches an embedder runs in: ``batch_size`` (an int, ``auto``; None = the embedder's own), with
    ``auto`` capped for its input size. One rule for the pipeline and the Ray workers that rebuild it."""
    return BatchSizer(batch_size or embedder.batch_size, max_size=auto_max_batch(embedder.input_size))


def pipelined(
    source: Iterable[T],
    prepare: Callable[[T], Any],
    model: Callable[[list[T], list[Any]], Sequence[Any]],
    *,
    batch_size: int | str | BatchSizer = 16,
    workers: int = 2,
    depth: int | None = None,
) -> Iterator[Done[T]]:
    """``model(items, prepared)`` over batches of prepared items, one :class:`Done` per item in input order.

    ``prepare`` runs in ``workers`` threads at most ``depth`` items (default: twice the largest batch) ahead
    of the caller; ``model`` runs in the caller's thread and returns one output per prepared item.
    """
    sizer = batch_size if isinstance(batch_size, BatchSizer) else BatchSizer(batch_size)
    depth = depth or 2 * sizer.max_size
    window: list[tuple[Done[T], Any]] = []
    good = 0
    with closing(prefetch(source, prepare, depth=depth, workers=workers)) as stream:
        while True:
            try:
                entry = next(stream, None)
            except Exception:  # the items before a failure still get their outputs
                yield from _run(window, model, sizer)
                raise
            if entry is None:
                break
            window.append(entry)
            good += entry[0].error is None
            if good >= sizer.next_size():
                yield from _run(window, model, sizer)
                window, good = [], 0
    yield from _run(window, model, sizer)


def _run(
    window: list[tuple[Done[T], Any]], model: Callable[..., Sequence[Any]], sizer: BatchSizer
) -> Iterator[Done[T]]:
    """The model over the window's prepared items (timed for the sizer), then the window in order."""
    ok = [(d, v) for d, v in window if d.error is None]
    if ok:
        planned = sizer.next_size()
        t0 = time.perf_counter()
        outputs = model([d.item for d, _ in ok], [v for _, v in ok])
        sizer.record(planned, len(ok), time.perf_counter() - t0)
        for (d, _), out in zip(ok, outputs):
            d.output = out
    for d, _ in window:
        yield d


def prefetch(
    source: Iterable[T], prepare: Callable[[T], Any], *, depth: int, workers: int = 2
) -> Iterator[tuple[Done[T], Any]]:
    """``(Done(index, item, error), prepare(item))`` in input order, prepared up to ``depth`` items ahead."""
    if depth < 1 or workers < 1:
        raise ValueError(f"depth={depth} and workers={workers} must be >= 1")
    slots: queue.Queue[Any] = queue.Queue()
    ahead = threading.BoundedSemaphore(depth)
    stop = threading.Event()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="id2-prepare")
    feeder = threading.Thread(
        target=_feed, args=(source, prepare, pool, slots, ahead, stop), name="id2-feeder", daemon=True
    )
    feeder.start()
    try:
        yield from _drain(slots, ahead)
    finally:
        stop.set()
        feeder.join()
        pool.shutdown(wait=True, cancel_futures=True)


def _drain(slots: queue.Queue[Any], ahead: threading.BoundedSemaphore) -> Iterator[tuple[Done[Any], Any]]:
    index = 0
    while True:
        entry = slots.get()
        if isinstance(entry, BaseException):
            raise entry
        if entry is None:
            return
        item, future = entry
        try:
            value = future.result()
        finally:
            ahead.release()  # the caller now holds this item; the feeder may prepare one more
        if isinstance(value, MediaError):
            yield Done(index, item, error=value), None
        else:
            yield Done(index, item), value
        index += 1


def _feed(
    source: Iterable[Any],
    prepare: Callable[[Any], Any],
    pool: ThreadPoolExecutor,
    slots: queue.Queue[Any],
    ahead: threading.BoundedSemaphore,
    stop: threading.Event,
) -> None:
    """The feeder thread: iterate ``source`` and submit ``prepare`` while fewer than ``depth`` wait."""
    items = iter(source)
    try:
        for item in items:
            while not ahead.acquire(timeout=_POLL_S):
                if stop.is_set():
                    return
            if stop.is_set():
                return
            slots.put((item, pool.submit(_guarded, prepare, item)))
    except BaseException as exc:  # raised to the caller after the items before it, never lost with the thread
        slots.put(exc)
        return
    finally:
        # A generator source (a video being decoded) is closed here, in the thread that ran it.
        close = getattr(items, "close", None)
        if close is not None:
            close()
    slots.put(None)


def _guarded(prepare: Callable[[Any], Any], item: Any) -> Any:
    try:
        return prepare(item)
    except MediaError as exc:
        return exc


__all__ = [
    "AUTO",
    "BatchSizer",
    "Done",
    "auto_max_batch",
    "embedder_batching",
    "check_batch_size",
    "pipelined",
    "prefetch",
]
