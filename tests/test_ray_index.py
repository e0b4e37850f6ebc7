"""Adding files on Ray Data: the per-batch workers (fast, no Ray) and one local-Ray run of
``Pipeline.add_files(..., executor=RayExecutor())`` into both backends."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from id2_plugin.assembly import build_embedder, open_store
from id2_plugin.config import Config, EmbedderConfig, StoreConfig

# The VAE signal alone: these tests are about the Ray plumbing, which is the same for every embedder.
EMBEDDER = EmbedderConfig(name="taef2", device="cpu", batch_size=8)


def _folder(tmp_path: Path, photos: list[Path]) -> tuple[Path, Path]:
    """Photos copied into a folder, plus one byte-identical copy under another name and one corrupt file."""
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for p in photos:
        shutil.copyfile(p, folder / p.name)
    shutil.copyfile(photos[0], folder / "sub" / "same-bytes.jpg")
    bad = folder / "sub" / "corrupt.jpg"
    bad.write_bytes(photos[1].read_bytes()[:300])
    return folder, bad


def test_workers_hash_and_embed_with_per_file_errors(
    tmp_path: Path, photo_paths: list[Path], taef2_encoder, latent_cache
) -> None:
    from id2_plugin.assembly import load_projection
    from id2_plugin.embedders.base import Embedder
    from id2_plugin.ray_executor import _EmbedActor, _hash_batch

    good = photo_paths[200:202]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    uris = np.array([str(good[0]), str(tmp_path / "missing.jpg"), str(bad), str(good[1])])

    index = np.arange(len(uris))
    hashed = _hash_batch({"uri": uris, "index": index}, max_bytes=10 << 20)
    assert hashed["index"].tolist() == [0, 1, 2, 3]
    assert hashed["sha256"][0] == hashlib.sha256(good[0].read_bytes()).hexdigest()
    assert hashed["error"][1].startswith("cannot read file") and hashed["sha256"][1] == ""
    assert hashed["error"][2] == "" and hashed["error"][3] == ""
    assert "max_bytes" in _hash_batch({"uri": uris[:1], "index": index[:1]}, max_bytes=10)["error"][0]

    actor = _EmbedActor(dataclasses.asdict(EMBEDDER), {"max_pixels": 64_000_000, "max_bytes": 10 << 20})
    out = actor({"uri": uris, "index": index})
    assert out["index"].tolist() == [0, 1, 2, 3]
    assert [bool(e) for e in out["error"]] == [False, True, True, False]
    # Decoded from memory, but the message must not name the source "<12 bytes>": the uri is reported beside it.
    assert not out["error"][2].startswith("<")
    assert out["sha256"][3] == hashlib.sha256(good[1].read_bytes()).hexdigest()
    # The worker's vectors are the library's embeddings of the same files.
    ref = Embedder(taef2_encoder, load_projection("default", "taef2"))
    expected = ref.project(latent_cache.encode(list(good)))
    np.testing.assert_allclose(out["vector"][[0, 3]], expected, atol=2e-3)
    assert not out["vector"][[1, 2]].any()


@pytest.mark.slow
def test_index_folder_on_local_ray_into_faiss_and_qdrant(
    tmp_path: Path, photo_paths: list[Path], taef2_encoder, latent_cache
) -> None:
    """12 real photos -> Ray (2 CPUs) -> FAISS and Qdrant stores; a rerun adds nothing."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("faiss")
    pytest.importorskip("qdrant_client")
    from id2_plugin.assembly import load_projection
    from id2_plugin.embedders.base import Embedder
    from id2_plugin.media import iter_image_files
    from id2_plugin.pipeline import Pipeline, RayExecutor

    photos = photo_paths[300:312]
    folder, bad = _folder(tmp_path, photos)
    ref = Embedder(taef2_encoder, load_projection("default", "taef2"))
    queries = ref.project(latent_cache.encode(photos))
    identity = build_embedder(EMBEDDER).identity
    assert identity == ref.identity

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        stores = {
            "faiss": StoreConfig(backend="faiss", path=str(tmp_path / "faiss")),
            "qdrant": StoreConfig(backend="qdrant", url=str(tmp_path / "qdrant"), collection="photos"),
        }
        files = iter_image_files([folder])
        assert len(files) == 14
        on_ray = RayExecutor(workers=1)
        for name, cfg in stores.items():
            config = Config(embedder=dataclasses.replace(EMBEDDER, batch_size=4), store=cfg)
            with Pipeline.from_config(config, create_store=True) as pipeline:
                first = pipeline.add_files(files, labels=("ray",), commit_every=5, executor=on_ray)
                assert (len(first.added), len(first.duplicates), first.store_count) == (12, 1, 12), name
                assert [u for u, _ in first.failures] == [str(bad)], name
                again = pipeline.add_files(files, executor=on_ray)
                assert (len(again.added), len(again.duplicates), again.store_count) == (0, 13, 12), name

            with open_store(cfg, embedder_identity=identity, dim=ref.dim, create=False) as store:
                top = store.query(queries, k=1)
                assert [t[0].sha256 for t in top] == [hashlib.sha256(p.read_bytes()).hexdigest() for p in photos]
                assert all(t[0].score > 0.999 and t[0].labels == ("ray",) for t in top), name
                assert all(Path(t[0].uri).parent in (folder, folder / "sub") for t in top)
    finally:
        ray.shutdown()
