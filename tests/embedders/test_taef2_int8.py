"""The ONNX TAEF2 encoders: int8 made by quantize_taef2 from the real weights and real photos, then compared to
fp32; the fp32 export compared to torch."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from id2_plugin.assembly import build_embedder, build_encoder
from id2_plugin.config import EmbedderConfig, load_config
from id2_plugin.embedders import _taef2_quantize as q
from id2_plugin.embedders.taef2_int8 import (
    FP32_FILE,
    INT8_FILE,
    TAEF2Int8Encoder,
    TAEF2OnnxFp32Encoder,
    export_taef2_fp32,
    quantize_taef2,
    runtime_for,
)
from id2_plugin.embedders.taesd import ENCODER_FILE, TAEF2Encoder
from id2_plugin.errors import ConfigError, IncompatibleStoreError, ModelNotFoundError
from id2_plugin.media import sha256_file
from id2_plugin.stores.faiss_store import FaissStore


@pytest.fixture(scope="module")
def int8_dir(tmp_path_factory: pytest.TempPathFactory, photo_paths: list[Path], shared_dir: Path) -> Path:
    """An int8 model calibrated on 3 photos (the last ones; the tests embed the first ones), temp files watched."""
    out = tmp_path_factory.mktemp("models")
    scratch = tmp_path_factory.mktemp("scratch")
    before, tempfile.tempdir = tempfile.tempdir, str(scratch)
    try:
        quantize_taef2(out, photo_paths[-3:], count=3, weights=shared_dir / "models" / "taef2")
    finally:
        tempfile.tempdir = before
    # The exported graph and ORT's augmented copy are gone (torch keeps only its kernel cache there).
    assert [p.name for p in scratch.iterdir() if not p.name.startswith("torchinductor")] == []
    return out / "taef2"


@pytest.mark.slow  # shares the module's quantisation (~45 s of CPU: export, calibration)
def test_quantized_model_records_its_fp32_source(int8_dir: Path, shared_dir: Path) -> None:
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(int8_dir / INT8_FILE))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta[q.SOURCE_KEY] == sha256_file(shared_dir / "models" / "taef2" / ENCODER_FILE)
    assert meta[q.RECIPE_KEY] == q.RECIPE
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ, really quantised
    assert list(int8_dir.iterdir()) == [int8_dir / INT8_FILE]  # nothing else (no calibration data) written


@pytest.mark.slow  # shares the module's quantisation (~45 s of CPU: export, calibration)
def test_int8_embeddings_follow_fp32_on_real_photos(int8_dir: Path, photo_paths: list[Path]) -> None:
    base = EmbedderConfig(name="taef2", device="cpu", batch_size=4)
    fp32 = build_embedder(base)
    int8 = build_embedder(
        EmbedderConfig(name="taef2", device="cpu", batch_size=4, precision="int8", weights=str(int8_dir))
    )
    assert isinstance(int8.encoder, TAEF2Int8Encoder) and int8.dim == fp32.dim  # type: ignore[attr-defined]
    refs = photo_paths[:4]
    a, b = fp32.embed(refs), int8.embed(refs)
    assert np.allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    assert ((a * b).sum(1) > 0.98).all()
    # JPEG q30 copies find their own photo at int8 exactly as at fp32.
    jpegs = []
    for p in refs:
        buf = io.BytesIO()
        Image.open(p).convert("RGB").save(buf, "JPEG", quality=30)
        jpegs.append(buf.getvalue())
    assert ((int8.embed(jpegs) @ b.T).argmax(1) == np.arange(4)).all()
    assert ((fp32.embed(jpegs) @ a.T).argmax(1) == np.arange(4)).all()


@pytest.mark.slow  # shares the module's quantisation (~45 s of CPU: export, calibration)
def test_identity_names_the_precision_and_the_store_refuses_the_other(int8_dir: Path, tmp_path: Path) -> None:
    fp32 = build_encoder(EmbedderConfig(name="taef2", device="cpu"))
    int8 = build_encoder(EmbedderConfig(name="taef2", device="cpu", precision="int8", weights=str(int8_dir)))
    assert int8.identity.startswith(fp32.identity + "/int8:")  # same weights, marked precision
    FaissStore(tmp_path / "s", embedder_identity=fp32.identity, dim=8, create=True).close()
    with pytest.raises(IncompatibleStoreError, match="embedder.precision=fp32: this store was built at fp32"):
        FaissStore(tmp_path / "s", embedder_identity=int8.identity)


@pytest.mark.slow  # shares the module's quantisation (~45 s of CPU: export, calibration)
def test_auto_uses_int8_only_when_the_model_resolves(int8_dir: Path, shared_dir: Path) -> None:
    found = build_encoder(EmbedderConfig(name="taef2", device="cpu", precision="auto", weights=str(int8_dir)))
    missing = build_encoder(
        EmbedderConfig(name="taef2", device="cpu", precision="auto", weights=str(shared_dir / "models" / "taef2"))
    )
    assert isinstance(found, TAEF2Int8Encoder)
    assert type(missing) is TAEF2Encoder


def test_missing_int8_model_says_how_to_make_it(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="id2-plugin quantize"):
        build_encoder(EmbedderConfig(name="taef2", device="cpu", precision="int8", weights=str(tmp_path)))


def test_runtime_auto_is_torch_without_the_exported_graph(tmp_path: Path, shared_dir: Path) -> None:
    weights = shared_dir / "models" / "taef2"  # the real fp32 weights, no ONNX export beside them
    assert runtime_for("auto", "cpu", weights) == "torch"
    assert type(build_encoder(EmbedderConfig(name="taef2", device="cpu", weights=str(weights)))) is TAEF2Encoder
    assert runtime_for("auto", "cuda:0", weights) == "torch" and runtime_for("torch", "cpu", weights) == "torch"
    with pytest.raises(ConfigError, match="runtime"):
        load_config(None, {"embedder": {"runtime": "tensorrt"}})


def test_int8_is_refused_where_it_does_not_exist() -> None:
    with pytest.raises(ConfigError, match="precision"):
        load_config(None, {"embedder": {"precision": "int4"}})
    with pytest.raises(ConfigError, match="taef2 only"):
        build_encoder(EmbedderConfig(name="sd-vae", precision="int8"))


@pytest.mark.slow  # the export (~20 s of CPU) and four photos through both runtimes
def test_fp32_in_onnxruntime_gives_torchs_vectors_under_torchs_identity(
    tmp_path: Path, photo_paths: list[Path], taef2_encoder, shared_dir: Path
) -> None:
    onnx = pytest.importorskip("onnx")
    out = export_taef2_fp32(tmp_path, weights=shared_dir / "models" / "taef2")
    assert list(out.parent.iterdir()) == [out] and out.name == FP32_FILE
    model = onnx.load(str(out))
    assert {p.key: p.value for p in model.metadata_props}[q.SOURCE_KEY] == taef2_encoder.weights_digest
    assert not {"QuantizeLinear", "DequantizeLinear"} & {n.op_type for n in model.graph.node}
    cfg = EmbedderConfig(name="taef2", device="cpu", batch_size=4, runtime="onnxruntime", weights=str(out.parent))
    ort = build_embedder(cfg)
    assert type(ort.encoder) is TAEF2OnnxFp32Encoder  # type: ignore[attr-defined]
    # the default runtime (auto) takes the exported graph on the CPU, torch where there is none
    assert (
        type(build_encoder(EmbedderConfig(name="taef2", device="cpu", weights=str(out.parent)))) is TAEF2OnnxFp32Encoder
    )
    assert runtime_for("auto", "cpu", tmp_path / "nothing-here") == "torch"
    assert ort.encoder.identity == taef2_encoder.identity  # type: ignore[attr-defined]  # so stores serve both
    images = np.stack([taef2_encoder.normalise(p) for p in photo_paths[200:204]])
    a, b = taef2_encoder.encode_arrays(images), ort.encoder.encode_arrays(images)  # type: ignore[attr-defined]
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert (cos >= 0.9999).all(), cos
    with pytest.raises(ConfigError, match="runtime"):
        build_encoder(EmbedderConfig(name="sd-vae", runtime="onnxruntime"))
    with pytest.raises(ConfigError, match="CPU only"):
        build_encoder(EmbedderConfig(name="taef2", device="cuda:0", runtime="onnxruntime", weights=str(out.parent)))
