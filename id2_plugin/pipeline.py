"""The application layer: the use cases every front end calls.

A :class:`Pipeline` is what a deployment runs on: the media limits, the embedder (one signal or the fused
one), the reference store and the match settings, built once from a :class:`~id2_plugin.Config` with the
store checked against the embedder once. The command line, the HTTP service, the host adapters and the
robustness suite are thin callers of it: a use case (identify, add references, remove, scan videos) is
written here and nowhere else. The search itself is :mod:`id2_plugin.search` (the built-in
``id2_identify_origin``); the bulk use cases run in this process or, given a
:class:`~id2_plugin.ray_executor.RayExecutor`, on a Ray cluster, through the same methods.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._batching import embedder_batching, pipelined
from ._files import sha256_file_or_none
from ._progress import progress_bar
from .assembly import build_embedder, match_options, open_store
from .config import Config
from .errors import ConfigError, MediaError
from .identify_context import IdentifyContext
from .media import MediaLike, MediaLimits
from .plugins import builtin_search_only, get_plugin_manager
from .ray_executor import RayExecutor
from .search import _or_error, frame_search, search_normalised
from .stores._bulk import bulk_add
from .types import OriginReport, ReferenceRecord
from .video import VideoReport, scan_videos

if TYPE_CHECKING:
    from .decision import DecisionModel
    from .embedders.base import ImageEmbedder
    from .stores.base import ReferenceStore

#: what embedding yields per file: its index, the sha256 of the bytes embedded ("": the one hashed
#: before), its vector, and an error message ("" when it was embedded)
_Embedded = tuple[int, str, Any, str]


@dataclass(frozen=True)
class Upload:
    """One reference to add: its content (bytes, or a file), the uri recorded for it, and the name its
    failure is reported under (default: the uri)."""

    data: bytes | Path
    uri: str
    name: str | None = None


@dataclass
class IngestResult:
    """What an ingestion did: new references (id, record), skipped duplicates (sha256), failures (what, why)."""

    added: list[tuple[str, ReferenceRecord]] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    store_count: int = 0


def embedder_from_config(cfg: Config, *, in_memory_only: bool = False) -> ImageEmbedder:
    """The configured embedder, with the configured media limits (no store); ``in_memory_only``: its vectors
    are never stored or returned (evaluation), so a raw latent needs no opt-in."""
    return build_embedder(cfg.embedder, cfg.media.limits(), in_memory_only=in_memory_only)


class Pipeline:
    """Embedder + store + match settings, checked together once; reuse one instance for many calls (the
    model loads once). ``config``: what it was built from, which Ray workers rebuild it with."""

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
        limits: MediaLimits | None = None,
        batch_size: int | str | None = None,
        config: Config | None = None,
    ) -> None:
        store.check_compatible(embedder.identity)
        if decision is not None and decision.embedder != embedder.identity:
            raise ConfigError(f"the decision model holds for {decision.embedder}, not {embedder.identity}")
        #: what the ``id2_identify_origin`` hook gets with every query
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
        self.embedder = embedder
        self.store = store
        self.k = k
        self.threshold = threshold
        self.decision = decision
        op = decision.operating_point if decision is not None else None
        #: the threshold on the store's cosine where one distance decides (explain of a pair without a store)
        self.cosine_threshold = op.cosine_threshold if op is not None else threshold
        self.limits = limits or getattr(embedder, "limits", None) or MediaLimits()
        #: the batch size of every bulk use case (an int, or ``auto``: tuned on the first batches, then kept)
        self.batching = embedder_batching(embedder, batch_size)
        self.config = config

    @classmethod
    def from_config(cls, cfg: Config, *, create_store: bool = False) -> Pipeline:
        """Build the embedder and open (``create_store``: create if missing) the configured store.

        An existing store is opened first: a wrong path fails at once, not after the model has loaded. It is
        then reopened with the embedder's identity and dimension, which checks them and lets this pipeline
        add references (a store opened without an identity is read-only).
        """
        if not create_store:
            open_store(cfg.store, embedder_identity=None, dim=None, create=False).close()
        embedder = embedder_from_config(cfg)
        store = open_store(cfg.store, embedder_identity=embedder.identity, dim=embedder.dim, create=create_store)
        try:
            return cls(
                embedder,
                store,
                **match_options(cfg.match, embedder),
                limits=cfg.media.limits(),
                batch_size=cfg.embedder.batch_size,
                config=cfg,
            )
        except BaseException:
            store.close()
            raise

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.store.close()

    # -- identify ---------------------------------------------------------------------------------------
    def identify(self, media: MediaLike, *, k: int | None = None) -> OriginReport:
        """The origin report for one query: the ``id2_identify_origin`` hook (plugins first, the built-in
        search last); ``k`` overrides match.k."""
        report = get_plugin_manager().hook.id2_identify_origin(media=media, context=self._context(k))
        if report is None:
            raise RuntimeError("no plugin answered id2_identify_origin (is the built-in plugin disabled?)")
        return report  # type: ignore[no-any-return]

    def identify_many(self, media: Sequence[MediaLike], *, k: int | None = None) -> list[OriginReport | MediaError]:
        """One report per query, in order; an unusable query gives its :class:`MediaError` instead.

        Queries are decoded in threads while the previous batch is embedded and searched (batches of
        :attr:`batching`) when only the built-in identification is installed; a plugin implementing
        ``id2_identify_origin`` sees every query one by one.
        """
        return list(self.identify_iter(media, k=k))

    def identify_iter(self, media: Iterable[MediaLike], *, k: int | None = None) -> Iterator[OriginReport | MediaError]:
        """:meth:`identify_many` streamed: each report as its batch finishes, in order, in bounded memory."""
        if not builtin_search_only():
            yield from (_or_error(lambda m: self.identify(m, k=k), m) for m in media)
            return
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

    # -- add / remove -----------------------------------------------------------------------------------
    def add_files(
        self,
        paths: Sequence[Path],
        *,
        labels: Sequence[str] = (),
        commit_every: int = 1024,
        progress: bool | str = False,
        executor: RayExecutor | None = None,
    ) -> IngestResult:
        """Add image files (already expanded from folders); the uri recorded is the absolute path.

        With ``executor``, the files are hashed and embedded on its Ray workers (built from :attr:`config`);
        the deduplication and the store writes stay here, so the outcome is the local one.
        """
        if executor is None:
            items = [_Item(p, sha256_file_or_none(p), str(Path(p).resolve()), str(p)) for p in paths]
            return self._ingest(items, labels, commit_every, self._embed_here(progress))
        config = self._config_for_workers()
        result = IngestResult()
        # Absolute paths: workers do not share the driver's working directory.
        files = [str(Path(p).resolve()) for p in paths]
        with executor.session(bool(progress)) as ray:
            items = []
            for p, path, (sha, error) in zip(paths, files, executor.hash_files(ray, files, self.limits.max_bytes)):
                if error:
                    result.failures.append((str(p), error))
                else:
                    items.append(_Item(path, sha, path, str(p)))

            def embed(todo: list[_Item]) -> Iterator[_Embedded]:
                files = [t.source for t in todo]
                rows = executor.embed_files(ray, files, config.embedder, self.limits, config.embedder.model_batch_size)
                desc = progress if isinstance(progress, str) else "indexing"
                with progress_bar(progress, len(todo), desc) as bar:
                    for row in rows:
                        bar.update(1)
                        yield row

            return self._ingest(items, labels, commit_every, embed, result)

    def add_uploads(
        self,
        uploads: Sequence[Upload],
        *,
        labels: Sequence[str] = (),
        commit_every: int = 1024,
        progress: bool | str = False,
    ) -> IngestResult:
        """Add references given as content (HTTP uploads, host callbacks)."""
        items = []
        for u in uploads:
            if isinstance(u.data, Path):
                sha = sha256_file_or_none(u.data)
            else:
                sha = hashlib.sha256(u.data).hexdigest() if u.data else None
            items.append(_Item(u.data, sha, u.uri, u.name or u.uri))
        return self._ingest(items, labels, commit_every, self._embed_here(progress))

    def _embed_here(self, progress: bool | str) -> Callable[[list[_Item]], Iterator[_Embedded]]:
        """Embedding in this process: decoding in threads overlapped with the model, in :attr:`batching`."""
        desc = progress if isinstance(progress, str) else ("indexing" if progress else False)

        def embed(todo: list[_Item]) -> Iterator[_Embedded]:
            sources = [t.source for t in todo]
            for item in self.embedder.embed_iter(sources, batch_size=self.batching, progress=desc, total=len(todo)):
                yield item.index, "", item.vector, "" if item.error is None else str(item.error)

        return embed

    def _ingest(
        self,
        items: list[_Item],
        labels: Sequence[str],
        commit_every: int,
        embed: Callable[[list[_Item]], Iterator[_Embedded]],
        result: IngestResult | None = None,
    ) -> IngestResult:
        """The one ingestion path: drop unreadable and already-stored content, embed the rest, commit in chunks."""
        result = result or IngestResult()
        todo = _new_content(self.store, items, result)
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        label_tuple = tuple(labels)

        def batches() -> Iterator[tuple[np.ndarray, list[ReferenceRecord]]]:
            for index, sha, vector, error in embed(todo):
                t = todo[index]
                if error:
                    result.failures.append((t.name, error))
                    continue
                record = ReferenceRecord(sha256=sha or t.sha256 or "", uri=t.uri, labels=label_tuple, added_at=now)
                yield np.asarray(vector, np.float32)[None, :], [record]

        # Stored content was dropped above, before embedding; the store's add still refuses a duplicate
        # another writer committed meanwhile, which counts as a duplicate here.
        bulk_add(
            self.store,
            batches(),
            commit_every=commit_every,
            skip_known=False,
            on_commit=lambda res: result.duplicates.extend(res.duplicates),
            on_added=result.added.extend,
        )
        result.store_count = self.store.info().count
        return result

    def remove(self, keys: Sequence[str]) -> int:
        """Remove references by id, sha256, or the path of an original file; the number removed."""
        return remove_references(self.store, keys)

    # -- video ------------------------------------------------------------------------------------------
    def scan_videos(
        self,
        paths: Sequence[str | os.PathLike],
        *,
        executor: RayExecutor | None = None,
        progress: bool = False,
        **options: Any,
    ) -> Iterator[VideoReport]:
        """Scan videos for frames whose origin is in the store (options of :func:`id2_plugin.video.scan_videos`):
        each sampled frame is decided as :meth:`identify` decides an image (``k`` and ``threshold`` override
        the match settings); with ``executor``, one video per Ray actor call (``workers`` is then the
        executor's)."""
        options.setdefault("k", self.k)
        options.setdefault("threshold", self.threshold)
        if executor is None:
            options.setdefault("batch_size", self.batching)
            context = replace(self._context(options["k"]), threshold=options["threshold"])
            options.setdefault("search", frame_search(context))
            return scan_videos(paths, self.embedder, self.store, progress=progress, **options)
        if "workers" in options:
            raise ConfigError("workers are decoder threads of a local scan; on Ray give RayExecutor(workers=...)")
        return executor.scan_videos(paths, self._config_for_workers(), options, progress)

    def _config_for_workers(self) -> Config:
        if self.config is None:
            raise ConfigError("Ray workers rebuild the pipeline from its config: build it with Pipeline.from_config")
        return self.config


def remove_references(store: ReferenceStore, keys: Sequence[str]) -> int:
    """Remove references by id, sha256, or the path of an original file (its content's sha256); the number removed."""
    resolved = []
    for key in keys:
        p = Path(key)
        resolved.append((sha256_file_or_none(p) or key) if p.is_file() else key)
    return store.remove(resolved)


@dataclass(frozen=True)
class _Item:
    source: Any  # what the embedder reads: a path or bytes
    sha256: str | None  # None: the content could not be read
    uri: str
    name: str  # how a failure names it


def _new_content(store: ReferenceStore, items: list[_Item], result: IngestResult) -> list[_Item]:
    """``items`` minus unreadable ones (to ``result.failures``) and content seen before (``result.duplicates``)."""
    readable = []
    for item in items:
        if item.sha256 is None:
            result.failures.append((item.name, "cannot read the content (missing, unreadable or empty)"))
        else:
            readable.append(item)
    known = store.contains([t.sha256 or "" for t in readable])
    seen: set[str] = set()
    todo = []
    for item, is_known in zip(readable, known):
        if is_known or item.sha256 in seen:
            result.duplicates.append(item.sha256 or "")
            continue
        seen.add(item.sha256 or "")
        todo.append(item)
    return todo


__all__ = ["IngestResult", "Pipeline", "RayExecutor", "Upload", "embedder_from_config", "remove_references"]
