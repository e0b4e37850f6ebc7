"""A small real robustness run (TAEF2 on real photos), shared by the report, resume and browser tests."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest


@dataclass
class Run:
    result: object
    paths: dict[str, Path]
    embedder: object
    dataset: object
    suite: list
    queries: list[Path]


def small_suite() -> list:
    from id2_plugin.robustness import Crop, Downscale, SuiteEntry

    # Two levels: a downscale served at 1/4 size (the normaliser upsizes it) and a strong crop that
    # reliably makes the hashes fail, so failure examples are rendered.
    return [SuiteEntry("downscale", (Downscale(0.25),)), SuiteEntry("crop", (Crop(0.6),))]


@pytest.fixture(scope="session")
def robustness_run(photo_paths, taef2_encoder, tmp_path_factory) -> Run:
    """10 query photos + 14 distractors, id2 (seeded random W) / vae_raw / pdq / phash, squash and
    center_crop, clean + 2 attack levels: about 90 TAEF2 encodings."""
    from id2_plugin.embedders.base import Embedder, Projection
    from id2_plugin.robustness import build_methods, photos_set, run_robustness, write_reports

    rng = np.random.default_rng(0)
    c, h, w = taef2_encoder.latent_shape
    # A random (untrained) W still exercises the whole id2 path: pool, project, normalise, cosine.
    w_mat = rng.standard_normal((c * (h // 4) * (w // 4), 64)).astype(np.float32)
    embedder = Embedder(taef2_encoder, Projection(w_mat, metadata={"embedder_name": taef2_encoder.name}, pool=4))
    queries = photo_paths[3::70][:10]
    distractors = photo_paths[1::50][:16]
    dataset = photos_set(queries, distractors, max_distractors=14)
    suite = small_suite()
    cache = {"cache_root": os.environ["ID2_TEST_CACHE_DIR"], "use_cache": True}  # opt-in, as --cache DIR
    result = run_robustness(
        dataset,
        build_methods(embedder, **cache),
        suite,
        seed=0,
        embedder=embedder,
        compare_policies=("center_crop",),
        n_failures=2,
        progress=False,
        command=["pytest", "robustness"],
        threshold=0.5,
        **cache,
    )
    paths = write_reports(result, tmp_path_factory.mktemp("robustness-report"))
    return Run(result, paths, embedder, dataset, suite, queries)
