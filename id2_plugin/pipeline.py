"""The application layer: the use cases every front end calls.

A :class:`Pipeline` is what a deployment runs on: the media limits, the embedder (one signal or the fused
one), the reference store and the match settings, built once from a :class:`~id2_plugin.Config` with the
store checked against the embedder once. The command line, the HTTP service, Ray jobs, the host adapters
and the robustness suite are thin callers of it: a use case (identify, add references, remove, scan
videos) is written here and nowhere else.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._files import sha256_file_or_none
from .assembly import build_embedder, match_options, open_store
from .config import Config
from .errors import MediaError
from .identify import Identifier
from .media import MediaLike, MediaLimits
from .types import OriginReport, ReferenceRecord

if TYPE_CHECKING:
    from .decision import DecisionModel
    from .embedders.base import ImageEmbedder
    from .stores._bulk import Batch, BulkAddResult
    from .stores.base import ReferenceStore
    from .video import VideoReport


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
    """Embedder + store + match settings, checked together once; reuse one instance for many calls."""

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
    ) -> None:
        self._attach(
            Identifier(
                embedder,
                store,
                k=k,
                threshold=threshold,
                rotations=rotations,
                mirror=mirror,
                windows=windows,
                decision=decision,
                batch_size=batch_size,
            ),
            limits,
        )

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
            )
        except BaseException:
            store.close()
            raise

    @classmethod
    def around(cls, identifier: Identifier, *, limits: MediaLimits | None = None) -> Pipeline:
        """The pipeline of a ready :class:`Identifier`: the same object, so every setting it was built with
        (windows, rotations, batching) holds; ``limits`` default to those the embedder decodes with."""
        pipeline = cls.__new__(cls)
        pipeline._attach(identifier, limits or getattr(identifier.context.embedder, "limits", None))
        return pipeline

    def _attach(self, identifier: Identifier, limits: MediaLimits | None) -> None:
        ctx = identifier.context
        self.embedder = ctx.embedder
        self.store = ctx.store
        self.k = ctx.k
        self.threshold = ctx.threshold
        self.decision = ctx.decision
        op = ctx.decision.operating_point if ctx.decision is not None else None
        #: the threshold on the store's cosine where one distance decides (video keyframes, explain of a pair)
        self.cosine_threshold = op.cosine_threshold if op is not None else ctx.threshold
        self.limits = limits or MediaLimits()
        self.identifier = identifier
        #: the batch size of every bulk use case (an int, or ``auto``: tuned on the first batches, then kept)
        self.batching = identifier.batching

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.store.close()

    # -- identify ---------------------------------------------------------------------------------------
    def identify(self, media: MediaLike, *, k: int | None = None) -> OriginReport:
        """The origin report for one query (through the ``id2_identify_origin`` hook); ``k`` overrides match.k."""
        return self.identifier.identify(media, k=k)

    def identify_many(self, media: Sequence[MediaLike], *, k: int | None = None) -> list[OriginReport | MediaError]:
        """One report per query, in order; an unusable query gives its :class:`MediaError` instead.

        Queries are decoded in threads while the previous batch is embedded and searched (batches of
        :attr:`batching`) when only the built-in identification is installed; a plugin implementing
        ``id2_identify_origin`` sees every query.
        """
        return self.identifier.identify_many(media, k=k)

    def identify_iter(self, media: Iterable[MediaLike], *, k: int | None = None) -> Iterator[OriginReport | MediaError]:
        """:meth:`identify_many` streamed: each report as its batch finishes, in order, in bounded memory."""
        return self.identifier.identify_iter(media, k=k)

    # -- add / remove -----------------------------------------------------------------------------------
    def add_files(
        self,
        paths: Sequence[Path],
        *,
        labels: Sequence[str] = (),
        commit_every: int = 1024,
        progress: bool | str = False,
    ) -> IngestResult:
        """Add image files (already expanded from folders); the uri recorded is the absolute path."""
        items = [_Item(p, sha256_file_or_none(p), str(Path(p).resolve()), str(p)) for p in paths]
        return self._ingest(items, labels, commit_every, progress)

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
        return self._ingest(items, labels, commit_every, progress)

    def add_vectors(
        self,
        batches: Iterable[Batch],
        *,
        commit_every: int = 1024,
        progress: bool | str = False,
        total: int | None = None,
    ) -> BulkAddResult:
        """Add vectors embedded elsewhere (Ray workers) with this pipeline's embedder identity."""
        from .stores._bulk import bulk_add

        return bulk_add(self.store, batches, commit_every=commit_every, progress=progress, total=total)

    def _ingest(
        self, items: list[_Item], labels: Sequence[str], commit_every: int, progress: bool | str
    ) -> IngestResult:
        """The one ingestion path: drop unreadable and already-stored content, embed the rest, commit in chunks."""
        from .stores._bulk import bulk_add

        result = IngestResult()
        todo = _new_content(self.store, items, result)
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        label_tuple = tuple(labels)

        desc = progress if isinstance(progress, str) else ("indexing" if progress else False)

        def batches() -> Iterator[tuple[np.ndarray, list[ReferenceRecord]]]:
            sources = [t.source for t in todo]
            for item in self.embedder.embed_iter(sources, batch_size=self.batching, progress=desc, total=len(todo)):
                t = todo[item.index]
                if item.error is not None:
                    result.failures.append((t.name, str(item.error)))
                    continue
                record = ReferenceRecord(sha256=t.sha256 or "", uri=t.uri, labels=label_tuple, added_at=now)
                yield np.asarray(item.vector, np.float32)[None, :], [record]

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
    def scan_videos(self, paths: Sequence[str | os.PathLike], **options: Any) -> Iterator[VideoReport]:
        """Scan videos for frames whose origin is in the store (options of :func:`id2_plugin.video.scan_videos`)."""
        from .video import scan_videos

        options.setdefault("k", self.k)
        options.setdefault("threshold", self.cosine_threshold)
        options.setdefault("batch_size", self.batching)
        return scan_videos(paths, self.embedder, self.store, **options)


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


__all__ = ["IngestResult", "Pipeline", "Upload", "embedder_from_config", "remove_references"]
