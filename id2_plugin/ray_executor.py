"""Ray Data execution of the bulk use cases: a :class:`RayExecutor` given to
:meth:`~id2_plugin.pipeline.Pipeline.add_files` or :meth:`~id2_plugin.pipeline.Pipeline.scan_videos` runs
their heavy part on a Ray cluster; what the use case does (deduplication, the records, the store writes,
the match settings) stays in the pipeline, so local and Ray execution are one API with one behaviour.

The work splits where it is cheapest to do it:

* **Adding files.** Every file's sha256 is computed in Ray tasks; the pipeline drops content already
  stored or repeated (its one dedupe path) and hands the rest to a pool of ``workers`` actors, each
  loading the embedder once, which decode, normalise and embed batches and return ``index, sha256,
  vector, error`` rows (a bad file is a row with ``error``; it never fails the job). Rows stream back
  to the driver, the only process that opens the store for writing, so a local FAISS folder or an
  embedded Qdrant works as well as a Qdrant cluster, in bounded memory.
* **Scanning videos.** Each of ``workers`` actors builds the embedder and opens the store (read-only)
  once, then runs :func:`~id2_plugin.video.scan_video` on one video per row with the driver's settings.

Workers build their components from the pipeline's config through :mod:`id2_plugin.assembly`, never a
``Pipeline``: this module sits below the application layer. Paths, model weights and the store must be
readable at the same location on every node (shared storage); the driver's ``ID2_*`` / ``HF_*``
environment variables are forwarded to the workers when Ray is started here.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ._batching import embedder_batching
from ._files import sha256_file
from ._lazy import require
from ._progress import progress_bar
from .assembly import build_embedder, match_options, open_store
from .config import Config, EmbedderConfig, load_config
from .errors import ConfigError, MediaError
from .identify_context import IdentifyContext
from .media import MediaLimits
from .search import frame_search
from .video import DEFAULT_DEDUPE_THRESHOLD, FrameReader, VideoReport, scan_video

#: Prefixes of environment variables forwarded to Ray workers (model location, offline mode, caches).
FORWARD_ENV_PREFIXES = ("ID2_", "HF_", "HUGGINGFACE_", "TORCH_HOME")


@dataclass(frozen=True)
class RayExecutor:
    """Where and how wide a use case runs on Ray: the cluster (the running one, else ``address``:
    ``"auto"``, ``"ray://host:10001"``; else a local Ray started and shut down around the call),
    ``workers`` actors (each loads the model once) of ``cpus_per_worker`` CPUs."""

    address: str | None = None
    workers: int = 1
    cpus_per_worker: float = 1.0

    def __post_init__(self) -> None:
        if self.workers < 1 or self.cpus_per_worker <= 0:
            raise ConfigError(f"Ray workers={self.workers} must be >= 1 and cpus_per_worker > 0")

    @contextmanager
    def session(self, progress: bool = False) -> Iterator[Any]:
        """The ``ray`` module, connected; a Ray started here is shut down on exit."""
        ray = require("ray")
        require("ray.data")
        started = not ray.is_initialized()
        if started:
            # Workers must find the model and caches like the driver does (ID2_MODELS_DIR, offline flags...).
            env = {k: v for k, v in os.environ.items() if k.startswith(FORWARD_ENV_PREFIXES)}
            ray.init(address=self.address, include_dashboard=False, runtime_env={"env_vars": env})
        ray.data.DataContext.get_current().enable_progress_bars = bool(progress)
        try:
            yield ray
        finally:
            if started:
                ray.shutdown()

    def hash_files(self, ray: Any, files: Sequence[str], max_bytes: int) -> list[tuple[str, str]]:
        """``(sha256, error)`` of every file (absolute paths), in order, hashed in Ray tasks."""
        if not files:
            return []
        hashed = ray.data.from_items([{"uri": f, "index": i} for i, f in enumerate(files)]).map_batches(
            _hash_batch, fn_kwargs={"max_bytes": max_bytes}, batch_size=256, batch_format="numpy"
        )
        out = [("", "")] * len(files)
        for batch in hashed.iter_batches(batch_size=1024, batch_format="numpy"):
            for i, sha, error in zip(batch["index"].tolist(), batch["sha256"], batch["error"]):
                out[i] = (str(sha), str(error))
        return out

    def embed_files(
        self, ray: Any, files: Sequence[str], embedder: EmbedderConfig, limits: MediaLimits, batch_size: int
    ) -> Iterator[tuple[int, str, np.ndarray, str]]:
        """``(index in files, sha256 of the bytes embedded, vector, error)`` per file, as batches finish."""
        if not files:
            return
        embedded = ray.data.from_items([{"uri": f, "index": i} for i, f in enumerate(files)]).map_batches(
            _EmbedActor,
            fn_constructor_kwargs={"embedder_config": asdict(embedder), "limits": asdict(limits)},
            batch_size=batch_size,
            compute=ray.data.ActorPoolStrategy(size=self.workers),
            num_cpus=self.cpus_per_worker,
            batch_format="numpy",
        )
        for b in embedded.iter_batches(batch_size=batch_size, batch_format="numpy"):
            yield from zip(
                b["index"].tolist(), [str(s) for s in b["sha256"]], b["vector"], [str(e) for e in b["error"]]
            )

    def scan_videos(
        self, paths: Sequence[str | os.PathLike], config: Config, options: dict[str, Any], progress: bool = False
    ) -> Iterator[VideoReport]:
        """:func:`~id2_plugin.video.scan_video` with ``options`` on every path, one video per actor call,
        yielding the reports as they stream back (completion order)."""
        FrameReader(
            "",
            options.get("mode", "keyframes"),
            options.get("fps"),
            options.get("dedupe", True),
            options.get("dedupe_threshold", DEFAULT_DEDUPE_THRESHOLD),
        )  # a bad mode or fps fails here, not in every actor
        if not paths:
            return
        with self.session(progress) as ray:
            ds = ray.data.from_items([{"path": os.path.abspath(p), "given": os.fspath(p)} for p in paths])
            ds = ds.map(
                _VideoActor,
                fn_constructor_kwargs={"config": config.to_dict(), "options": options},
                concurrency=self.workers,
                num_cpus=self.cpus_per_worker,
            )
            with progress_bar(progress, len(paths), "scanning videos (ray)", unit="video") as bar:
                for row in ds.iter_rows():
                    bar.update(1)
                    yield VideoReport.from_dict(json.loads(row["report"]))


def _hash_batch(batch: dict[str, np.ndarray], max_bytes: int) -> dict[str, np.ndarray]:
    """Ray task: sha256 of each file; unreadable or oversized files get an error instead."""
    shas: list[str] = []
    errors: list[str] = []
    for uri in batch["uri"]:
        uri = str(uri)
        try:
            if os.path.getsize(uri) > max_bytes:
                raise OSError(f"file is larger than media.max_bytes={max_bytes}")
            shas.append(sha256_file(uri))
            errors.append("")
        except OSError as exc:
            shas.append("")
            errors.append(f"cannot read file: {exc.strerror or exc}")
    return {"index": batch["index"], "sha256": np.array(shas), "error": np.array(errors)}


class _EmbedActor:
    """Ray actor: loads the embedder once, then embeds batches of files.

    The file is read once: its bytes are both hashed (so the record describes exactly the content that
    was embedded, even if the file changed since the hash pass) and decoded.
    """

    def __init__(self, embedder_config: dict[str, Any], limits: dict[str, Any]) -> None:
        self.limits = MediaLimits(**limits)
        self.embedder = build_embedder(EmbedderConfig(**embedder_config), self.limits)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        uris = [str(u) for u in batch["uri"]]
        shas = [""] * len(uris)
        errors = [""] * len(uris)
        images: list[np.ndarray] = []
        good: list[int] = []
        for i, uri in enumerate(uris):
            try:
                with open(uri, "rb") as f:
                    data = f.read(self.limits.max_bytes + 1)
                if len(data) > self.limits.max_bytes:
                    raise MediaError(f"file is larger than media.max_bytes={self.limits.max_bytes}", uri)
                shas[i] = hashlib.sha256(data).hexdigest()
                images.append(self.embedder.normalise(data))
                good.append(i)
            except MediaError as exc:
                # The error names its source "<N bytes>" (it was decoded from memory); the uri is reported beside it.
                msg = str(exc)
                prefix = f"{exc.source}: " if exc.source else ""
                errors[i] = msg[len(prefix) :] if prefix and msg.startswith(prefix) else msg
            except OSError as exc:
                errors[i] = f"cannot read file: {exc.strerror or exc}"
        vectors = np.zeros((len(uris), self.embedder.dim), np.float32)
        if images:
            vectors[good] = self.embedder.embed_arrays(np.stack(images))
        return {
            "index": batch["index"],
            "uri": np.array(uris),
            "sha256": np.array(shas),
            "vector": vectors,
            "error": np.array(errors),
        }


class _VideoActor:
    """Ray Data actor: builds the embedder and opens the store read-only once, then scans one video per row."""

    def __init__(self, config: dict[str, Any], options: dict[str, Any]) -> None:
        cfg = load_config(None, config)
        self.embedder = build_embedder(cfg.embedder, cfg.media.limits())
        self.store = open_store(
            cfg.store, embedder_identity=self.embedder.identity, dim=self.embedder.dim, create=False
        )
        self.store.check_compatible(self.embedder.identity)
        batching = options.get("batch_size") or embedder_batching(self.embedder, cfg.embedder.batch_size)
        # frames decided as the driver's Pipeline.identify decides, with the driver's k and threshold
        match = {**match_options(cfg.match, self.embedder), "k": options["k"], "threshold": options["threshold"]}
        search = frame_search(IdentifyContext(self.embedder, self.store, **match))
        self.options = dict(options, batch_size=batching, search=search)

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        report = scan_video(row["path"], self.embedder, self.store, **self.options)
        report.path = row["given"]  # report the path as the caller wrote it; workers needed it absolute
        # One JSON string column: Arrow cannot hold the ragged, nullable report structure reliably.
        return {"path": row["given"], "report": json.dumps(report.to_dict())}


__all__ = ["FORWARD_ENV_PREFIXES", "RayExecutor"]
