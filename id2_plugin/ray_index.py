"""Embedding large folders on Ray Data and writing them to a reference store (FAISS or Qdrant).

The work splits where it is cheapest to do it:

1. **Hash** (Ray tasks): every file's sha256, in parallel. The driver checks them against the store in
   streaming batches and drops content already indexed or repeated in this run, so a restarted run embeds
   only what is missing.
2. **Embed** (Ray actors): a pool of ``num_workers`` actors, each loading the embedder ONCE, decodes and
   normalises its files, embeds them in batches of ``batch_size`` and returns ``sha256, uri, vector,
   error`` rows. A bad file becomes a row with ``error`` set; it never fails the job.
3. **Write** (driver): rows stream back with ``iter_batches`` and go through
   :func:`~id2_plugin.stores._bulk.bulk_add`, which commits every ``commit_every`` references. Only the
   driver opens the store, so a local FAISS folder or an embedded Qdrant folder works as well as a Qdrant
   cluster, and memory stays bounded however large the folder is.

On a multi-node cluster the image paths must be readable by the workers (shared filesystem) and the model
weights must be found on every node (``ID2_MODELS_DIR``; the ``ID2_*`` / ``HF_*`` environment variables of
the driver are forwarded to the workers when this module starts Ray).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import numpy as np

from ._files import sha256_file
from ._lazy import require
from .config import EmbedderConfig, StoreConfig
from .errors import MediaError
from .media import MediaLimits, iter_image_files
from .types import ReferenceRecord

if TYPE_CHECKING:
    from .stores.base import ReferenceStore

#: Prefixes of environment variables forwarded to Ray workers (model location, offline mode, caches).
_FORWARD_ENV_PREFIXES = ("ID2_", "HF_", "HUGGINGFACE_", "TORCH_HOME")


@dataclass(frozen=True)
class RayIndexResult:
    """Outcome of :func:`index_folder_ray`.

    ``duplicates`` counts files whose content was already in the store or appeared earlier in the run;
    ``failures`` lists ``(uri, message)`` for files that could not be read or decoded.
    """

    files: int
    added: int
    duplicates: int
    failures: tuple[tuple[str, str], ...]
    store_count: int


def _forwarded_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(_FORWARD_ENV_PREFIXES)}


def _ensure_ray(address: str | None) -> bool:
    """Connect to (``address``) or start a local Ray; returns True if this call started it."""
    ray = require("ray")
    if ray.is_initialized():
        return False
    ray.init(address=address, include_dashboard=False, runtime_env={"env_vars": _forwarded_env()})
    return True


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
    return {"uri": batch["uri"], "sha256": np.array(shas), "error": np.array(errors)}


class _EmbedActor:
    """Ray actor: loads the embedder once, then embeds batches of files.

    The file is read once: its bytes are both hashed (so the record describes exactly the content that
    was embedded, even if the file changed since the hash pass) and decoded.
    """

    def __init__(self, embedder_config: dict[str, Any], limits: dict[str, Any]) -> None:
        from .assembly import build_embedder

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
        return {"uri": np.array(uris), "sha256": np.array(shas), "vector": vectors, "error": np.array(errors)}


def _driver_identity(embedder_config: EmbedderConfig, limits: MediaLimits) -> tuple[str, int]:
    """The identity and dimension the store must match, from an embedder built once on the driver."""
    from .assembly import build_embedder

    # Built on the driver to validate the config before any cluster work; the workers build their own copy.
    embedder = build_embedder(embedder_config, limits)
    return embedder.identity, embedder.dim


def _hash_pass(
    ray: Any, files: list[str], store: ReferenceStore, limits: MediaLimits, failures: list[tuple[str, str]]
) -> tuple[list[dict[str, str]], int]:
    """Hash in parallel, filter against the store on the driver: (files left to embed, duplicates)."""
    hashed = ray.data.from_items([{"uri": f} for f in files]).map_batches(
        _hash_batch, fn_kwargs={"max_bytes": limits.max_bytes}, batch_size=256, batch_format="numpy"
    )
    todo: list[dict[str, str]] = []
    seen: set[str] = set()
    duplicates = 0
    for batch in hashed.iter_batches(batch_size=1024, batch_format="numpy"):
        uris, shas, errs = [str(u) for u in batch["uri"]], [str(s) for s in batch["sha256"]], batch["error"]
        known = store.contains(shas)
        for uri, sha, err, is_known in zip(uris, shas, errs, known):
            if err:
                failures.append((uri, str(err)))
            elif is_known or sha in seen:
                duplicates += 1
            else:
                seen.add(sha)
                todo.append({"uri": uri})
    return todo, duplicates


def _embed_dataset(
    ray: Any,
    todo: list[dict[str, str]],
    embedder_config: EmbedderConfig,
    limits: MediaLimits,
    batch_size: int,
    num_workers: int,
    num_cpus_per_worker: float,
) -> Any:
    """The lazy Ray dataset embedding ``todo`` on a pool of ``num_workers`` actors."""
    return ray.data.from_items(todo).map_batches(
        _EmbedActor,
        fn_constructor_kwargs={
            "embedder_config": dataclasses.asdict(embedder_config),
            "limits": dataclasses.asdict(limits),
        },
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=num_workers),
        num_cpus=num_cpus_per_worker,
        batch_format="numpy",
    )


def _record_batches(
    embedded: Any, batch_size: int, labels: Sequence[str], added_at: str, failures: list[tuple[str, str]]
) -> Iterator[tuple[np.ndarray, list[ReferenceRecord]]]:
    """(vectors, records) of the embedded rows as they stream back; failed rows go to ``failures``."""
    label_tuple = tuple(labels)
    for b in embedded.iter_batches(batch_size=batch_size, batch_format="numpy"):
        errs = [str(e) for e in b["error"]]
        failures.extend((str(b["uri"][i]), e) for i, e in enumerate(errs) if e)
        ok = [i for i, e in enumerate(errs) if not e]
        if ok:
            recs = [
                ReferenceRecord(sha256=str(b["sha256"][i]), uri=str(b["uri"][i]), labels=label_tuple, added_at=added_at)
                for i in ok
            ]
            yield np.asarray(b["vector"], np.float32)[ok], recs


def index_folder_ray(
    paths: Sequence[str | os.PathLike],
    embedder_config: EmbedderConfig,
    store_config: StoreConfig,
    *,
    labels: Sequence[str] = (),
    batch_size: int = 16,
    num_workers: int = 1,
    num_cpus_per_worker: float = 1.0,
    commit_every: int = 1024,
    media_limits: MediaLimits | None = None,
    ray_address: str | None = None,
    progress: bool = True,
) -> RayIndexResult:
    """Embed the images under ``paths`` (folders recurse) on Ray Data and add them to the configured store.

    Uses the running Ray instance if there is one, else connects to ``ray_address`` (``"auto"``, a
    ``ray://`` URL) or starts a local one (``None``) and shuts it down afterwards. The store is created if
    missing and must have been built by the same embedder. Re-running on the same input adds nothing:
    content (sha256) already stored is skipped before it is embedded.
    """
    from .assembly import open_store
    from .stores._bulk import bulk_add

    if batch_size < 1 or num_workers < 1 or commit_every < 1:
        raise ValueError("batch_size, num_workers and commit_every must all be >= 1")
    limits = media_limits or MediaLimits()
    # Absolute paths: workers do not share the driver's working directory.
    files = [os.path.abspath(p) for p in iter_image_files(list(paths))]
    identity, dim = _driver_identity(embedder_config, limits)
    store = open_store(store_config, embedder_identity=identity, dim=dim, create=True)
    failures: list[tuple[str, str]] = []
    started = False
    try:
        store.check_compatible(identity)
        if not files:
            return RayIndexResult(files=0, added=0, duplicates=0, failures=(), store_count=store.info().count)
        ray = require("ray")
        started = _ensure_ray(ray_address)
        ray.data.DataContext.get_current().enable_progress_bars = progress
        todo, duplicates = _hash_pass(ray, files, store, limits, failures)
        added = 0
        if todo:
            embedded = _embed_dataset(ray, todo, embedder_config, limits, batch_size, num_workers, num_cpus_per_worker)
            now = datetime.now(timezone.utc).isoformat(timespec="seconds")
            rows = _record_batches(embedded, batch_size, labels, now, failures)
            res = bulk_add(
                store, rows, commit_every=commit_every, progress="indexing" if progress else False, total=len(todo)
            )
            added, duplicates = res.added, duplicates + res.duplicates
        return RayIndexResult(
            files=len(files),
            added=added,
            duplicates=duplicates,
            failures=tuple(failures),
            store_count=store.info().count,
        )
    finally:
        store.close()
        if started:
            require("ray").shutdown()
