"""Fusion is open to registered signals: a third-party signal, written only from ``hookspecs.py`` and
registered through ``id2_register_embedders``, joins the fused embedder by name (``embedder.signals``) with
its weight (``embedder.fusion``), and identifies real photos end to end."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import id2_plugin
from id2_plugin.assembly import build_embedder, resolve_embedder_name
from id2_plugin.config import load_config
from id2_plugin.errors import ConfigError
from id2_plugin.media import to_rgb_array
from id2_plugin.plugins import get_plugin_manager

BINS = 4  # per channel: a 64-bin colour histogram


class ColourHistogram(id2_plugin.ImageEmbedder):
    """A deterministic whole-image signal: the square root of the 4x4x4 colour histogram, L2-normalised
    (so the cosine of two images is their Bhattacharyya coefficient)."""

    name = "colour-hist"

    def __init__(self, spec: id2_plugin.EmbedderSpec) -> None:
        self.spec = spec
        self.batch_size = spec.batch_size
        self.resize_policy = spec.resize_policy

    @property
    def identity(self) -> str:
        return f"colour-hist/{BINS}/{self.spec.input_size}/{self.resize_policy}"

    @property
    def dim(self) -> int:
        return BINS**3

    @property
    def input_size(self) -> int:
        return self.spec.input_size

    def normalise(self, source: id2_plugin.media.MediaLike) -> np.ndarray:
        size = self.spec.input_size
        return to_rgb_array(source, (size, size), policy=self.resize_policy, limits=self.spec.limits)

    def embed_arrays(self, images: np.ndarray) -> np.ndarray:
        q = np.asarray(images, np.int64) * BINS // 256
        codes = (q[..., 0] * BINS + q[..., 1]) * BINS + q[..., 2]
        hist = np.stack([np.bincount(c.ravel(), minlength=self.dim) for c in codes]).astype(np.float32)
        root = np.sqrt(hist / hist.sum(axis=1, keepdims=True))
        return root / np.linalg.norm(root, axis=1, keepdims=True)


class ColourPlugin:
    """What a third-party package ships: one factory, registered by name."""

    def __init__(self, registered_name: str = "colour-hist") -> None:
        self.registered_name = registered_name
        self.specs: list[id2_plugin.EmbedderSpec] = []

    def build(self, spec: id2_plugin.EmbedderSpec) -> ColourHistogram:
        if spec.precision == "int8":
            raise ConfigError("colour-hist has no int8 model; use embedder.precision fp32")
        self.specs.append(spec)
        return ColourHistogram(spec)

    @id2_plugin.hookimpl
    def id2_register_embedders(self, register) -> None:
        register(self.registered_name, self.build)


@pytest.fixture()
def plugin() -> Iterator[ColourPlugin]:
    plugin = ColourPlugin()
    get_plugin_manager().register(plugin, name="test-colour-hist")
    yield plugin
    get_plugin_manager().unregister(name="test-colour-hist")


def _config(tmp_path: Path, **embedder: object):
    section = {"device": "cpu", "batch_size": 8, "signals": ["id2", "colour-hist"]}
    return load_config(None, {"embedder": {**section, **embedder}, "store": {"path": str(tmp_path / "store")}})


def _degraded(path: Path) -> bytes:
    img = Image.open(path).convert("RGB")
    img = img.resize((img.width * 2 // 3, img.height * 2 // 3), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=40)
    return buf.getvalue()


def test_a_registered_signal_joins_fusion_with_its_weight(plugin: ColourPlugin, photo_paths, tmp_path) -> None:
    cfg = _config(tmp_path, name="fused", fusion={"id2": 0.7, "colour-hist": 0.3})
    fused = build_embedder(cfg.embedder)
    assert [p.name for p in fused.parts] == ["id2", "colour-hist"]  # type: ignore[attr-defined]
    assert (
        fused.signals["colour-hist"][2] == pytest.approx(0.3) and "colour-hist=0.3000:colour-hist/4" in fused.identity
    )
    # the plugin got the embedder section's spec; the VAE's own keys (weights, precision) stay with the VAE
    (spec,) = plugin.specs
    assert (spec.name, spec.input_size, spec.batch_size, spec.device, spec.weights) == (
        "colour-hist",
        256,
        8,
        "cpu",
        None,
    )

    photos = photo_paths[300:306]
    vectors = fused.embed(photos)
    parts = [p.embed(photos) for p in fused.parts]  # type: ignore[attr-defined]
    expected = 0.7 * (parts[0] @ parts[0].T) + 0.3 * (parts[1] @ parts[1].T)
    np.testing.assert_allclose(vectors @ vectors.T, expected, atol=1e-5)
    scores = fused.signal_scores(vectors[0], vectors)
    assert scores[1]["colour-hist"] == pytest.approx(float(parts[1][1] @ parts[1][0]), abs=1e-5)


def test_the_fused_pipeline_identifies_degraded_photos(plugin: ColourPlugin, photo_paths, tmp_path) -> None:
    cfg = _config(tmp_path, name="auto", fusion={"id2": 0.8, "colour-hist": 0.2})
    assert resolve_embedder_name(cfg.embedder) == "fused"  # auto fuses: no SSCD among these signals to check
    references = photo_paths[400:412]
    with id2_plugin.Pipeline.from_config(cfg, create_store=True) as pipeline:
        assert pipeline.add_files(references).store_count == len(references)
        reports = pipeline.identify_many([_degraded(p) for p in references[::4]])
    for origin, report in zip(references[::4], reports):
        assert not isinstance(report, Exception) and report.best is not None
        assert report.best.uri == str(origin)
        assert {name for name, _ in report.best.signals} == {"id2", "colour-hist"}


def test_what_fusion_refuses(plugin: ColourPlugin, tmp_path) -> None:
    with pytest.raises(ConfigError, match="no weight for colour-hist"):
        build_embedder(_config(tmp_path, name="fused").embedder)  # the shipped fit knows id2 and sscd only
    with pytest.raises(ConfigError, match="not registered"):
        build_embedder(_config(tmp_path, name="fused", signals=["id2", "no-such-signal"]).embedder)
    with pytest.raises(ConfigError, match="latent encoder"):
        build_embedder(_config(tmp_path, name="fused", signals=["id2", "taef2"]).embedder)
    with pytest.raises(ConfigError, match="at least two distinct signals"):
        _config(tmp_path, signals=["colour-hist"])
    with pytest.raises(ConfigError, match="colour-hist has no int8 model"):  # the factory's own refusal
        build_embedder(_config(tmp_path, name="colour-hist", precision="int8").embedder)
    with pytest.raises(ConfigError, match="expected a number"):
        build_embedder(_config(tmp_path, name="fused", fusion={"id2": 1, "colour-hist": "lots"}).embedder)


def test_a_signal_must_answer_to_its_registered_name(tmp_path) -> None:
    plugin = ColourPlugin(registered_name="colours")
    get_plugin_manager().register(plugin, name="test-colours")
    try:
        with pytest.raises(ConfigError, match="calls itself 'colour-hist'"):
            build_embedder(
                _config(tmp_path, name="fused", signals=["id2", "colours"], fusion={"id2": 1, "colours": 1}).embedder
            )
    finally:
        get_plugin_manager().unregister(name="test-colours")
