"""What the HTTP service answers: the JSON (or picture) of each route, with server paths hidden from clients.

The functions that do model work (:func:`report_json`, :func:`batch_json`, :func:`explain_body`) run on
the service's workers (:mod:`._http_worker`). Unless ``serve.expose_paths`` is set, a reference's file
path is cut to its file name and any absolute path in a message to ``.../name``: a client learns nothing
of the server's file system.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import threading
from typing import Any

from id2_plugin import __version__
from id2_plugin.errors import MediaError
from id2_plugin.explain import explain_pair, render_explanation
from id2_plugin.pipeline import Pipeline

from ._http_admission import Capacity
from ._http_worker import Service

__all__ = [
    "batch_json",
    "explain_body",
    "info_json",
    "public_uri",
    "redact_paths",
    "references_json",
    "report_json",
]

#: an absolute POSIX or Windows path inside a message (not a URL's path: no "scheme:" just before it)
_PATH = re.compile(r"(?<![\w:/])(?:[A-Za-z]:\\|/)(?:[^\s'\"<>|,;()]+[/\\])+([^\s'\"<>|,;()/\\]*)")


def public_uri(uri: str) -> str:
    """A reference uri as clients see it: a server file path becomes its file name; other uris stay."""
    path = uri[len("file://") :] if uri.startswith("file://") else uri
    if os.path.isabs(path) or re.match(r"^[A-Za-z]:[\\/]", path):
        return os.path.basename(path.rstrip("/\\")) or uri
    return uri


def redact_paths(text: str) -> str:
    """``text`` with every absolute server path cut to ``.../name``."""
    return _PATH.sub(lambda m: f".../{m.group(1)}", text)


def explain_body(pipeline: Pipeline, query: bytes, reference: bytes, fmt: str, expose_paths: bool) -> tuple[bytes, str]:
    """The explanation as JSON, or its picture; built in memory, never written to disk. It carries the
    decision on the pair against the served store (the best other candidate named like reports name them)."""
    expl, images = explain_pair(
        query, reference, pipeline.embedder, threshold=pipeline.cosine_threshold, context=pipeline.context
    )
    other = expl.decision.best_other if expl.decision is not None else None
    if other is not None and not expose_paths:
        decision = dataclasses.replace(expl.decision, best_other=dataclasses.replace(other, uri=public_uri(other.uri)))
        expl = dataclasses.replace(expl, decision=decision)
    if fmt == "json":
        return json.dumps(expl.to_dict()).encode(), "application/json"
    data, _ = render_explanation(expl, images, fmt)
    return data, "image/png" if fmt == "png" else "text/html; charset=utf-8"


def report_json(pipeline: Pipeline, data: bytes, name: str, expose_paths: bool, k: int | None) -> dict[str, Any]:
    return _public_report(pipeline.identify(data, k=k), name, expose_paths)


def batch_json(
    pipeline: Pipeline, uploads: list[tuple[str, bytes]], expose_paths: bool, k: int | None, stop: threading.Event
) -> dict[str, Any]:
    """One report (or error) per upload; stops between batches once ``stop`` is set (the request was given up)."""
    media = itertools.takewhile(lambda _: not stop.is_set(), (data for _, data in uploads))
    results = []
    for (name, _), r in zip(uploads, pipeline.identify_iter(media, k=k)):
        if stop.is_set():
            break
        results.append(
            {"query": name, "error": f"not a usable image: {r}"}
            if isinstance(r, MediaError)
            else _public_report(r, name, expose_paths)
        )
    return {"results": results}


def _public_report(report: Any, name: str, expose_paths: bool) -> dict[str, Any]:
    if not expose_paths:
        report = dataclasses.replace(
            report, matches=tuple(dataclasses.replace(m, uri=public_uri(m.uri)) for m in report.matches)
        )
    return dataclasses.replace(report, query=name).to_dict()


def references_json(result: Any, expose_paths: bool) -> dict[str, Any]:
    """The answer to ``POST /v1/references``: ids added, duplicates skipped, uploads refused and why."""
    return {
        "added": [
            {"id": rid, "sha256": rec.sha256, "uri": rec.uri if expose_paths else public_uri(rec.uri)}
            for rid, rec in result.added
        ],
        "duplicates": result.duplicates,
        "errors": [{"name": name, "error": why} for name, why in result.failures],
    }


def info_json(svc: Service, store_info: Any, capacity: Capacity) -> dict[str, Any]:
    """The answer to ``GET /v1/info``: model, store, load and limits."""
    p, cfg = svc.pipeline, svc.cfg
    return {
        "version": __version__,
        "embedder": p.embedder.identity,
        "dim": p.embedder.dim,
        "k": p.k,
        "threshold": p.threshold,
        "store": _public_store_info(store_info.to_dict(), cfg.expose_paths),
        "writes_enabled": bool(cfg.token),
        "load": {"admitted": capacity.inflight, "workers_busy": svc.busy},
        "limits": {
            "max_upload_bytes": cfg.max_upload_bytes,
            "request_timeout_s": cfg.request_timeout_s,
            "max_concurrency": cfg.max_concurrency,
            "queue_size": cfg.queue_size,
        },
    }


def _public_store_info(info: dict[str, Any], expose_paths: bool) -> dict[str, Any]:
    if expose_paths:
        return info
    return dict(
        info, location=public_uri(str(info["location"])), extra=json.loads(redact_paths(json.dumps(info["extra"])))
    )
