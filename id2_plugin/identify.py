"""The identification entry point: :class:`Identifier`, a ready embedder + store + match settings that runs
the ``id2_identify_origin`` hook per query, or the built-in search in pipelined batches."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from .config import Config
from .decision import DecisionModel
from .errors import ConfigError, MediaError
from .media import MediaLike
from .plugins import builtin_search_only, get_plugin_manager
from .search import IdentifyContext, _or_error, search_normalised
from .types import OriginReport

if TYPE_CHECKING:
    from .embedders.base import ImageEmbedder
    from .stores.base import ReferenceStore


class Identifier:
    """A ready pipeline: reuse one instance for many queries (the model loads once)."""

    def __init__(
        self,
        embedder: ImageEmbedder,
        store: ReferenceStore,
        *,
        k: int = 5,
        threshold: float = 0.5,
        rotations: tuple[int, ...] = (0,),
        mirror: bool = False,
        windows: str = "auto",
        decision: DecisionModel | None = None,
        batch_size: int | str | None = None,
    ) -> None:
        from ._pipelining import BatchSizer, auto_max_batch

        store.check_compatible(embedder.identity)
        if decision is not None and decision.embedder != embedder.identity:
            raise ConfigError(f"the decision model holds for {decision.embedder}, not {embedder.identity}")
        self.context = IdentifyContext(
            embedder=embedder,
            store=store,
            k=k,
            threshold=threshold,
            rotations=tuple(rotations),
            mirror=mirror,
            windows=windows,
            decision=decision,
        )
        #: batches of :meth:`identify_iter` (``batch_size``: an int, ``auto``, or None = the embedder's)
        self.batching = BatchSizer(batch_size or embedder.batch_size, max_size=auto_max_batch(embedder.input_size))

    @classmethod
    def from_config(cls, cfg: Config) -> Identifier:
        """The identify-only face of :meth:`id2_plugin.pipeline.Pipeline.from_config` (one way to build)."""
        from .pipeline import Pipeline

        return Pipeline.from_config(cfg).identifier

    def identify(self, media: MediaLike, *, k: int | None = None) -> OriginReport:
        """Run the ``id2_identify_origin`` hook (plugins first, the built-in search last); ``k`` overrides match.k."""
        report = get_plugin_manager().hook.id2_identify_origin(media=media, context=self._context(k))
        if report is None:
            raise RuntimeError("no plugin answered id2_identify_origin (is the built-in plugin disabled?)")
        return report  # type: ignore[no-any-return]

    def identify_many(self, media: Sequence[MediaLike], *, k: int | None = None) -> list[OriginReport | MediaError]:
        """:meth:`identify` for each query (an unusable one gives its :class:`MediaError`), in order."""
        return list(self.identify_iter(media, k=k))

    def identify_iter(self, media: Iterable[MediaLike], *, k: int | None = None) -> Iterator[OriginReport | MediaError]:
        """:meth:`identify_many` streamed as batches finish. With only the built-in search installed, queries
        are decoded in threads overlapped with batched embedding and search (:attr:`batching`); a plugin
        implementing ``id2_identify_origin`` sees every query one by one."""
        if not builtin_search_only():
            yield from (_or_error(lambda m: self.identify(m, k=k), m) for m in media)
            return
        from ._pipelining import pipelined

        context = self._context(k)

        def normalise(m: MediaLike) -> tuple[np.ndarray, float]:
            t0 = time.perf_counter()
            return context.embedder.normalise(m), (time.perf_counter() - t0) * 1e3

        def model(batch: list[MediaLike], prepared: list[tuple[np.ndarray, float]]) -> list[OriginReport]:
            ms = sum(t for _, t in prepared) / len(prepared)
            return search_normalised(batch, [im for im, _ in prepared], context, ms)

        for done in pipelined(media, normalise, model, batch_size=self.batching):
            yield done.error if done.error is not None else done.output

    def _context(self, k: int | None) -> IdentifyContext:
        if k is None or k == self.context.k:
            return self.context
        if k < 1:
            raise ConfigError(f"k={k} must be >= 1")
        return replace(self.context, k=k)
