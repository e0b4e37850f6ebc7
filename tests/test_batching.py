"""The batching component: decode overlapped with the model, in order, errors kept, memory bounded."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from id2_plugin._batching import AUTO, BatchSizer, auto_max_batch, pipelined, prefetch
from id2_plugin.errors import ConfigError
from id2_plugin.media import to_rgb_array


def _normalise(source) -> np.ndarray:
    return to_rgb_array(source, (64, 64))


def _mean_colour(_, images: list[np.ndarray]) -> list[np.ndarray]:
    return [im.reshape(-1, 3).mean(axis=0) for im in images]


def test_results_come_in_input_order_with_bad_media_reported_in_place(photo_paths: list[Path], tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    bad = tmp_path / "truncated.jpg"
    bad.write_bytes(photo_paths[0].read_bytes()[:200])
    sources: list = [*photo_paths[:7]]
    sources[3:3] = [bad, b"not an image"]
    sources.insert(int(rng.integers(6, 9)), tmp_path / "missing.jpg")
    seen: list[int] = []

    def model(batch, images):
        seen.append(len(images))
        return _mean_colour(batch, images)

    done = list(pipelined(sources, _normalise, model, batch_size=3, workers=3))
    assert [d.index for d in done] == list(range(len(sources))) and [d.item for d in done] == sources
    failed = [d.index for d in done if d.error is not None]
    assert failed == [i for i, s in enumerate(sources) if not (isinstance(s, Path) and s in photo_paths)]
    assert all(d.output is None for d in done if d.error is not None)
    for d in (d for d in done if d.error is None):
        assert np.allclose(d.output, _normalise(d.item).reshape(-1, 3).mean(axis=0))
    assert seen == [3, 3, 1]  # bad media never reaches the model and does not shrink a batch


def test_at_most_depth_prepared_items_wait_beside_the_running_batch(photo_paths: list[Path]) -> None:
    depth, batch = 4, 2
    lock = threading.Lock()
    alive, peak, prepared = [0], [0], [0]

    def prepare(path):
        image = _normalise(path)
        with lock:
            alive[0] += 1
            prepared[0] += 1
            peak[0] = max(peak[0], alive[0])
        return image

    def model(items, images):
        # Wait (without a timing assertion) until the feeder has filled the queue: proves the overlap.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with lock:
                if prepared[0] >= min(len(photo_paths[:16]), consumed[0] + len(images) + depth):
                    break
            time.sleep(0.005)
        with lock:
            alive[0] -= len(images)
            consumed[0] += len(images)
        return _mean_colour(items, images)

    consumed = [0]
    done = list(pipelined(photo_paths[:16], prepare, model, batch_size=batch, depth=depth))
    assert len(done) == 16 and all(d.error is None for d in done)
    assert peak[0] == depth + batch


def test_a_source_failure_is_raised_after_the_items_before_it(photo_paths: list[Path]) -> None:
    def source():
        yield from photo_paths[:3]
        raise RuntimeError("disk went away")

    got = []
    with pytest.raises(RuntimeError, match="disk went away"):
        for d in pipelined(source(), _normalise, _mean_colour, batch_size=2):
            got.append(d)
    assert [d.item for d in got] == photo_paths[:3] and all(d.output is not None for d in got)


def test_closing_the_stream_early_stops_the_feeder(photo_paths: list[Path]) -> None:
    stream = prefetch(iter(photo_paths), _normalise, depth=2)
    first, image = next(stream)
    assert first.item == photo_paths[0] and image.shape == (64, 64, 3)
    stream.close()
    assert not any(t.name == "id2-feeder" for t in threading.enumerate())


def test_auto_tries_each_size_once_after_a_warm_up_then_keeps_the_fastest() -> None:
    sizer = BatchSizer(AUTO)
    sizes = []
    for per_item in (9.0, 3.0, 1.0, 2.0):  # warm-up at 4 (ignored), then 4, 8, 16
        size = sizer.next_size()
        assert sizer.chosen is None
        sizes.append(size)
        sizer.record(size, size - 1, 0.0)  # a partial batch (end of a stream) is not a measurement
        sizer.record(size, size, per_item * size)
    assert sizes == [4, 4, 8, 16] and sizer.chosen == 8 == sizer.next_size()
    assert BatchSizer(AUTO, max_size=auto_max_batch(512)).max_size == 4
    assert BatchSizer(5).chosen == 5


def test_auto_batches_follow_the_plan_through_a_stream(photo_paths: list[Path]) -> None:
    sizer = BatchSizer(AUTO)
    calls: list[int] = []

    def model(items, images):
        calls.append(len(images))
        return _mean_colour(items, images)

    assert len(list(pipelined(photo_paths[:60], _normalise, model, batch_size=sizer))) == 60
    assert calls[:4] == [4, 4, 8, 16] and sizer.chosen in (4, 8, 16)
    assert all(c == sizer.chosen for c in calls[4:-1]) and sum(calls) == 60


@pytest.mark.parametrize("value", [0, -2, "fast", True, 2.5])
def test_bad_batch_sizes_are_refused(value) -> None:
    with pytest.raises(ConfigError, match="batch_size"):
        BatchSizer(value)


def test_pipelined_embeddings_equal_the_sequential_ones(photo_paths: list[Path], taef2_encoder) -> None:
    from id2_plugin.assembly import default_projection_path
    from id2_plugin.embedders.base import Embedder, Projection

    embedder = Embedder(taef2_encoder, Projection.load(default_projection_path("taef2")))
    paths = photo_paths[100:105]
    sequential = embedder.embed(paths)
    items = list(embedder.embed_iter(paths, batch_size=2))
    assert [i.source for i in items] == paths
    assert np.allclose(np.stack([i.vector for i in items]), sequential, atol=1e-5)
