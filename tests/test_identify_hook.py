"""What the ``id2_identify_origin`` hook really sees in a batch (``identify_many`` / ``identify_iter``), as
its hookspec states: skipped for the batched built-in search while that is the only implementation, called
per query, in order, as soon as a plugin implements it (also with the built-in disabled)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import id2_plugin
from id2_plugin.default_plugins import builtin_search
from id2_plugin.embedders.base import fit_arrays
from id2_plugin.media import to_rgb_array
from id2_plugin.pipeline import Pipeline
from id2_plugin.plugins import BUILTIN_SEARCH, builtin_search_only, get_plugin_manager
from id2_plugin.stores.faiss_store import FaissStore
from id2_plugin.types import OriginReport, ReferenceRecord

SIZE, GRID = 64, 4


class MeanColours(id2_plugin.ImageEmbedder):
    """A cheap deterministic signal: the centred mean colours of a 4x4 grid."""

    name = "mean-colours"
    identity = "mean-colours/4x4/64"
    dim = GRID * GRID * 3
    input_size = SIZE

    def normalise(self, source: Any) -> np.ndarray:
        return to_rgb_array(source, (SIZE, SIZE))

    def embed_arrays(self, images: np.ndarray) -> np.ndarray:
        x = fit_arrays(images, SIZE).astype(np.float32)
        cells = x.reshape(len(x), GRID, SIZE // GRID, GRID, SIZE // GRID, 3).mean(axis=(2, 4)).reshape(len(x), -1)
        cells -= cells.mean(axis=1, keepdims=True)
        return cells / np.linalg.norm(cells, axis=1, keepdims=True)


class Spy:
    """A third-party ``id2_identify_origin``: answers ``b"known"`` itself, defers everything else."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    @id2_plugin.hookimpl
    def id2_identify_origin(self, media: Any, context: id2_plugin.IdentifyContext) -> OriginReport | None:
        self.seen.append(media)
        if media == b"known":
            return OriginReport(matches=(), is_match=True, threshold=context.threshold, embedder="spy", projection=None)
        return None


@pytest.fixture(scope="module")
def identifier(photo_paths: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    embedder = MeanColours()
    refs = photo_paths[500:530]
    store = FaissStore(
        tmp_path_factory.mktemp("hook") / "s", embedder_identity=embedder.identity, dim=embedder.dim, create=True
    )
    store.add(embedder.embed(refs), [ReferenceRecord(sha256=f"{i:064x}", uri=str(p)) for i, p in enumerate(refs)])
    return Pipeline(embedder, store, k=3, threshold=0.0)


@pytest.fixture()
def builtin_calls(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every query the built-in hook implementation searches (the batched path calls the search directly)."""
    calls: list[Any] = []
    search = builtin_search.search
    monkeypatch.setattr(builtin_search, "search", lambda media, context: calls.append(media) or search(media, context))
    return calls


@pytest.fixture()
def spy() -> Iterator[Spy]:
    spy = Spy()
    get_plugin_manager().register(spy, name="test-spy")
    yield spy
    get_plugin_manager().unregister(name="test-spy")


def _queries(photo_paths: list[Path]) -> list[bytes]:
    out = []
    for p in photo_paths[500:530:10]:
        buf = io.BytesIO()
        Image.open(p).convert("RGB").save(buf, "JPEG", quality=60)
        out.append(buf.getvalue())
    return out


def test_with_the_builtin_alone_a_batch_skips_the_hook(identifier, builtin_calls, photo_paths) -> None:
    queries = _queries(photo_paths)
    assert builtin_search_only()
    reports = identifier.identify_many(queries)
    assert builtin_calls == []  # batched straight into the search
    singles = [identifier.identify(q) for q in queries]
    assert len(builtin_calls) == len(queries)  # one by one, through the hook
    assert [r.best.uri for r in reports] == [r.best.uri for r in singles] == [str(p) for p in photo_paths[500:530:10]]


def test_a_plugin_sees_every_query_of_a_batch_in_order(identifier, builtin_calls, spy, photo_paths) -> None:
    queries = [*_queries(photo_paths), b"known"]
    assert not builtin_search_only()
    reports = list(identifier.identify_iter(queries))
    assert spy.seen == queries
    assert reports[-1].embedder == "spy"  # answered by the plugin
    assert builtin_calls == queries[:-1]  # deferred ones reached the built-in, per query
    assert all(r.embedder == MeanColours.identity for r in reports[:-1])


def test_with_the_builtin_disabled_a_batch_still_goes_through_the_plugin(identifier, spy) -> None:
    pm = get_plugin_manager()
    module = pm.unregister(name=BUILTIN_SEARCH)
    try:
        assert not builtin_search_only()
        assert [r.embedder for r in identifier.identify_many([b"known", b"known"])] == ["spy", "spy"]
        with pytest.raises(RuntimeError, match="no plugin answered"):
            identifier.identify_many([b"unknown"])
    finally:
        pm.register(module, name=BUILTIN_SEARCH)
    assert builtin_search_only() is False  # the spy is still registered
