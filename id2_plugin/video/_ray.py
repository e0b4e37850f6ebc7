"""The same per-video scan on a Ray Data cluster."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from .._lazy import require

if TYPE_CHECKING:
    from ..config import Config
from ._decode import DEFAULT_DEDUPE_THRESHOLD, FrameReader, SampleMode
from ._report import VideoReport
from ._scan import _video_bar, scan_video

#: Prefixes of environment variables forwarded to Ray workers (model location, offline mode, caches).
_RAY_FORWARD_ENV = ("ID2_", "HF_", "HUGGINGFACE_", "TORCH_HOME")


class _RayScanner:
    """Ray Data actor: builds the embedder and opens the store once, then scans one video per row."""

    def __init__(self, config: dict[str, Any], options: dict[str, Any]) -> None:
        from ..config import load_config
        from ..pipeline import Pipeline

        cfg = load_config(None, config)
        self.pipeline = Pipeline.from_config(cfg)
        self.options = dict(
            options,
            k=cfg.match.k,
            threshold=self.pipeline.cosine_threshold,
            batch_size=options.get("batch_size") or self.pipeline.batching,
        )

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        report = scan_video(row["path"], self.pipeline.embedder, self.pipeline.store, **self.options)
        report.path = row["given"]  # report the path as the caller wrote it; workers needed it absolute
        # One JSON string column: Arrow cannot hold the ragged, nullable report structure reliably.
        return {"path": row["given"], "report": json.dumps(report.to_dict())}


def scan_videos_ray(
    paths: Sequence[str | os.PathLike],
    config: Config,
    *,
    mode: SampleMode = "keyframes",
    fps: float | None = None,
    batch_size: int | None = None,
    dedupe: bool = True,
    dedupe_threshold: float = DEFAULT_DEDUPE_THRESHOLD,
    concurrency: int = 1,
    num_cpus: float = 1.0,
    ray_address: str | None = None,
    progress: bool = False,
) -> Iterator[VideoReport]:
    """Run :func:`scan_video` over ``paths`` as a Ray Data pipeline and yield the reports as they stream back.

    Each of ``concurrency`` actors (``num_cpus`` CPUs each) builds the embedder and opens the store from
    ``config`` once and opens the store read-only. Paths, the model weights and the store must be readable
    at the same location on every node (shared storage). Uses the running Ray cluster, else connects to
    ``ray_address`` (``"auto"``, ``"ray://host:10001"``), else starts a local Ray; the driver's ``ID2_*`` /
    ``HF_*`` environment variables are forwarded to the workers when Ray is started here.

    The store and model are checked on the driver first, so a missing or incompatible store fails here
    with a clear :class:`~id2_plugin.errors.StoreError` instead of inside every actor.
    """
    ray = require("ray")
    require("ray.data")
    FrameReader("", mode, fps, dedupe, dedupe_threshold)
    if not paths:
        return
    _check_store_on_driver(config)
    if not ray.is_initialized():
        # Workers must find the model and cache like the driver does (ID2_MODELS_DIR, offline flags...).
        env = {k: v for k, v in os.environ.items() if k.startswith(_RAY_FORWARD_ENV)}
        ray.init(address=ray_address, include_dashboard=False, runtime_env={"env_vars": env})
    options = dict(mode=mode, fps=fps, batch_size=batch_size, dedupe=dedupe, dedupe_threshold=dedupe_threshold)
    ds = ray.data.from_items([{"path": os.path.abspath(p), "given": os.fspath(p)} for p in paths])
    ds = ds.map(
        _RayScanner,
        fn_constructor_kwargs={"config": config.to_dict(), "options": options},
        concurrency=concurrency,
        num_cpus=num_cpus,
    )
    with _video_bar(progress, len(paths), "scanning videos (ray)") as bar:
        for row in ds.iter_rows():
            bar.update(1)
            yield VideoReport.from_dict(json.loads(row["report"]))


def _check_store_on_driver(config: Config) -> None:
    from ..pipeline import Pipeline

    Pipeline.from_config(config).close()
