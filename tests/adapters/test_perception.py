"""perception adapter: the hasher API, the frame-wise video hasher and perception's own benchmark."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from id2_plugin.adapters.perception import ID2FramewiseHasher, ID2Hasher


def _crop_10(image: np.ndarray) -> np.ndarray:
    """Cut 10 % off every border (the embedding squashes the rest back to a square)."""
    h, w = image.shape[:2]
    return np.ascontiguousarray(image[h // 10 : h - h // 10, w // 10 : w - w // 10])


def test_hasher_strings_distances_and_pickling(embedder_256, photo_paths, edited_copies) -> None:
    hasher = ID2Hasher(embedder=embedder_256)
    assert hasher.hash_length == embedder_256.dim
    orig, other = photo_paths[0], photo_paths[1]
    h_orig = hasher.compute(str(orig))
    h_edit = hasher.compute(str(edited_copies[orig]))
    h_other = hasher.compute(np.asarray(Image.open(other).convert("RGB")))
    v = hasher.string_to_vector(h_orig)
    assert v.dtype == np.float32 and v.shape == (embedder_256.dim,)
    assert np.linalg.norm(v) == pytest.approx(1.0, abs=1e-5)
    d_edit, d_other = hasher.compute_distance(h_orig, h_edit), hasher.compute_distance(h_orig, h_other)
    assert d_edit < 0.5 < d_other
    assert hasher.vector_to_string(v, hash_format="hex") == v.astype(np.float32).tobytes().hex()
    # perception's video benchmark ships hashers to worker processes: the state must not carry the model.
    clone = pickle.loads(pickle.dumps(ID2Hasher()))
    assert clone.config is None and clone._embedder is None


def test_framewise_video_hasher_keeps_one_hash_per_shot(
    small_embedder, photo_paths, make_video, make_frame, tmp_path: Path
) -> None:
    shots = [make_frame(photo_paths[7]), make_frame(photo_paths[8])]
    video = make_video(tmp_path / "two_shots.mp4", shots, frames_per_shot=8, fps=4)
    hasher = ID2FramewiseHasher(ID2Hasher(embedder=small_embedder), interframe_threshold=0.05, frames_per_second=1)
    hashes = hasher.compute(str(video))
    assert isinstance(hashes, list) and len(hashes) == 2  # 4 sampled frames, 2 shots
    vecs = [hasher.string_to_vector(h) for h in hashes]
    single = ID2Hasher(embedder=small_embedder)
    for shot, vec in zip(shots, vecs):
        assert single.compute_distance(single.compute(shot, hash_format="vector"), vec) < 0.1


def test_perception_benchmark_runs_id2_next_to_pdq_and_phash(
    small_embedder, photo_paths, degrade_array, tmp_path: Path
) -> None:
    """perception's own benchmark (transform -> compute_hashes -> compute_threshold_recall) on 8 real photos.

    The 64 px raw-latent embedder keeps it fast; the default 256 px one is exercised by the test above.
    """
    benchmarking = pytest.importorskip("perception.benchmarking", reason="needs perception[benchmarking]")
    from perception.hashers import PDQHash, PHash

    dataset = benchmarking.BenchmarkImageDataset.from_tuples([(str(p), "photos") for p in photo_paths[100:108]])
    transforms = dataset.transform(
        {"noop": lambda image: image, "jpeg50_colour": degrade_array, "crop_10": _crop_10},
        storage_dir=str(tmp_path / "bench"),
    )
    hashers = {"id2": ID2Hasher(embedder=small_embedder), "pdq": PDQHash(), "phash": PHash()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hashes = transforms.compute_hashes(hashers, max_workers=2)
        table = hashes.compute_threshold_recall(precision_threshold=99.9).reset_index()
    assert set(table["hasher_name"]) == {"id2", "pdq", "phash"}
    assert set(table["transform_name"]) == {"noop", "jpeg50_colour", "crop_10"}
    assert (table["n_exemplars"] > 0).all()
    ours = table[table["hasher_name"] == "id2"].set_index("transform_name")
    # On these mild edits the embedding separates all 8 copies from the 7 other photos.
    assert ours.loc["jpeg50_colour", "recall"] == 100.0
    assert ours.loc["noop", "recall"] == 100.0
