"""A third-party store written only from ``hookspecs.py`` works end to end: registered through the hook,
opened with the documented spec, filled and queried from the command line on real photos; and every backend
meets the :class:`StoreBackend` protocol the conformance kit checks."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import id2_plugin
from id2_plugin.cli import cli, load_commands
from id2_plugin.errors import StoreError
from id2_plugin.plugins import get_plugin_manager
from id2_plugin.stores.base import StoreBackend
from id2_plugin.stores.faiss_store import FaissStore
from id2_plugin.testing import check_reference_store, check_store_protocol
from id2_plugin.types import AddResult, Match, ReferenceRecord, StoreInfo


class DictStore(id2_plugin.ReferenceStore):
    """Only what the ReferenceStore ABC and the hookspec ask for."""

    backend = "dictstore"

    def __init__(self, db: dict[str, Any], location: str) -> None:
        self.db, self.location = db, location

    @property
    def embedder_identity(self) -> str:
        return self.db["identity"]

    @property
    def dim(self) -> int:
        return self.db["dim"]

    def add(self, vectors: np.ndarray, records: Sequence[ReferenceRecord]) -> AddResult:
        added, dups = [], []
        for v, r in zip(vectors, records):
            if r.sha256 in {x.sha256 for x in self.db["records"]}:
                dups.append(r.sha256)
                continue
            self.db["vectors"].append(np.asarray(v, np.float32))
            self.db["records"].append(r)
            added.append(str(len(self.db["records"]) - 1))
        return AddResult(tuple(added), tuple(dups))

    def remove(self, keys: Sequence[str]) -> int:
        return 0

    def query(self, vectors: np.ndarray, k: int = 5, threshold: float | None = None) -> list[list[Match]]:
        refs = np.stack(self.db["vectors"])
        out = []
        for q in np.asarray(vectors, np.float32):
            scores = refs @ q
            order = np.argsort(-scores)[:k]
            out.append(
                [
                    Match(str(i), self.db["records"][i].uri, float(scores[i]), rank + 1, self.db["records"][i].sha256)
                    for rank, i in enumerate(order)
                    if threshold is None or scores[i] >= threshold
                ]
            )
        return out

    def contains(self, sha256s: Sequence[str]) -> list[bool]:
        held = {r.sha256 for r in self.db["records"]}
        return [s in held for s in sha256s]

    def info(self) -> StoreInfo:
        return StoreInfo(self.backend, self.location, len(self.db["records"]), self.dim, self.embedder_identity, "dict")


class DictStorePlugin:
    """A backend whose "server" is a dict (location/collection -> store), recording how it was opened."""

    def __init__(self) -> None:
        self.servers: dict[str, dict[str, Any]] = {}
        self.calls: list[dict[str, Any]] = []

    def open(self, spec: id2_plugin.StoreSpec) -> DictStore:
        """The one frozen spec the hookspec documents; a field the hookspec does not name is an AttributeError."""
        self.calls.append(dataclasses.asdict(spec))
        key = f"{spec.location}/{spec.collection}"
        if key not in self.servers:
            if not spec.create:
                raise StoreError(f"no dict store at {key}")
            self.servers[key] = {"identity": spec.embedder_identity, "dim": spec.dim, "vectors": [], "records": []}
        return DictStore(self.servers[key], spec.location)

    @id2_plugin.hookimpl
    def id2_register_stores(self, register: Any) -> None:
        register("dictstore", self.open)


@pytest.fixture()
def plugin() -> DictStorePlugin:
    load_commands()
    pm = get_plugin_manager()
    plugin = DictStorePlugin()
    pm.register(plugin, name="test-dictstore")
    yield plugin
    pm.unregister(name="test-dictstore")


def test_documented_store_factory_works_end_to_end(
    plugin: DictStorePlugin, photo_paths: list[Path], tmp_path: Path
) -> None:
    runner = CliRunner()
    lib = tmp_path / "lib"
    lib.mkdir()
    for p in photo_paths[200:204]:
        shutil.copy(p, lib / p.name)
    common = [
        "--set",
        "store.backend=dictstore",
        "--set",
        "store.url=mem://contract",
        "--set",
        "store.collection=c1",
        "--set",
        "embedder.name=taef2",
    ]
    res = runner.invoke(cli, [*common, "index", "add", str(lib)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "added 4" in res.output

    query = tmp_path / "q.jpg"
    Image.open(photo_paths[201]).convert("RGB").resize((180, 130)).save(query, quality=35)
    res = runner.invoke(cli, [*common, "query", "--json", "--threshold", "0", str(query)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    report = json.loads(res.output.strip().splitlines()[-1])
    assert Path(report["best"]["uri"]).name == photo_paths[201].name

    # the factory got a spec with every documented field, with the configured values, every time
    # (a query opens the store twice: once before the model loads, so a wrong location fails at once, then
    # with the embedder's identity and dimension, which writes on an existing store need)
    calls = plugin.calls
    assert len(calls) == 3 and all(c["location"] == "mem://contract" and c["collection"] == "c1" for c in calls)
    assert calls[0]["create"] is True and calls[1]["create"] is False and calls[2]["create"] is False
    assert calls[1]["embedder_identity"] is None and calls[2]["embedder_identity"] == calls[0]["embedder_identity"]
    assert isinstance(calls[0]["dim"], int) and calls[0]["index"] == "flat"
    assert calls[0]["index_options"] == {} and calls[0]["api_key"] is None
    assert len(plugin.servers["mem://contract/c1"]["records"]) == 4


def _open_backend(backend: str, tmp_path: Path) -> StoreBackend:
    ident = "contract-embedder@0000/64/squash+raw"
    if backend == "faiss":
        return FaissStore(tmp_path / "faiss", ident, 8, create=True)
    if backend == "qdrant":
        pytest.importorskip("qdrant_client")
        from id2_plugin.stores.qdrant_store import QdrantStore

        return QdrantStore(":memory:", embedder_identity=ident, dim=8, create=True)
    return DictStore({"identity": ident, "dim": 8, "vectors": [], "records": []}, "mem://contract")


@pytest.mark.parametrize("backend", ["faiss", "qdrant", "dictstore"])
def test_every_backend_meets_the_store_protocol(backend: str, tmp_path: Path) -> None:
    with _open_backend(backend, tmp_path) as store:
        assert isinstance(store, StoreBackend)
        check_store_protocol(store)


class _Incomplete:
    """A duck-typed store (no base class) that forgot ``contains``."""

    embedder_identity = "duck-embedder"
    dim = 8

    def add(self, vectors: np.ndarray, records: Sequence[ReferenceRecord]) -> AddResult:
        return AddResult((), ())

    def remove(self, keys: Sequence[str]) -> int:
        return 0

    def query(self, vectors: np.ndarray, k: int = 5, threshold: float | None = None) -> list[list[Match]]:
        return [[] for _ in vectors]

    def info(self) -> StoreInfo:
        return StoreInfo("duck", "mem://duck", 0, self.dim, self.embedder_identity, "none")

    def fetch_vectors(self, reference_ids: Sequence[str]) -> np.ndarray | None:
        return None

    def check_compatible(self, embedder_identity: str) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _Incomplete:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def test_the_kit_refuses_a_store_missing_a_protocol_member(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="_Incomplete does not meet the StoreBackend protocol: it lacks contains"):
        check_reference_store(lambda location, **kw: _Incomplete(), tmp_path / "duck")

    class Complete(_Incomplete):
        def contains(self, sha256s: Sequence[str]) -> list[bool]:
            return [False] * len(sha256s)

    # the protocol, not the base class, is the contract: a duck-typed store with every member meets it
    assert not isinstance(_Incomplete(), StoreBackend) and isinstance(Complete(), StoreBackend)
    check_store_protocol(Complete())
