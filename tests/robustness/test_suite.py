"""The robustness suite on real photos without a model: data sets, the query loop, results and failures.

PDQ and pHash need no weights, so these runs take a second or two; the model-backed run (id2, vae_raw,
resize policies, provenance of W) is the shared ``robustness_run`` of ``conftest.py``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from id2_plugin.errors import ConfigError
from id2_plugin.robustness import (
    JPEG,
    Crop,
    SuiteEntry,
    attack_seed,
    build_methods,
    pairs_set,
    photos_set,
    run_robustness,
)

# A mild level, a random-position crop and a strong crop, on which the hashes fail for some queries.
SUITE = [SuiteEntry("jpeg", (JPEG(50),)), SuiteEntry("crop", (Crop(0.8), Crop(0.35)))]
LABELS = ["clean", *(a.label for e in SUITE for a in e.levels)]


@pytest.fixture(scope="module")
def photos(photo_paths: list[Path]) -> list[Path]:
    """Six photos of six ImageNet classes (the folder is sorted by class)."""
    return photo_paths[5::97][:6]


@pytest.fixture(scope="module")
def distractors(photo_paths: list[Path]) -> list[Path]:
    return photo_paths[40::97][:6]


def _run(dataset, **kwargs):
    return run_robustness(dataset, build_methods(None), SUITE, seed=0, progress=False, command=["pytest"], **kwargs)


@pytest.fixture(scope="module")
def hash_run(photos, distractors):
    dataset = photos_set(photos, distractors)
    return dataset, _run(dataset, n_failures=2)


def test_photos_set_is_copy_detection_and_drops_copies_of_the_queries(photos, distractors, tmp_path) -> None:
    renamed = tmp_path / "renamed-copy.jpg"  # same bytes as a query under another name
    shutil.copyfile(photos[0], renamed)
    dataset = photos_set([*photos, photos[0]], [renamed, *photos, *distractors], max_distractors=4)
    assert dataset.kind == "photos" and dataset.query_paths == photos
    assert dataset.reference_paths == [*photos, *distractors[:4]] and dataset.n_distractors == 4
    assert (dataset.positives == np.eye(len(photos), len(photos) + 4, dtype=bool)).all()
    assert photos_set(photos, distractors[:4]).manifest_digest == dataset.manifest_digest
    assert photos_set(photos, distractors[:3]).manifest_digest != dataset.manifest_digest


def test_pairs_set_limit_keeps_only_the_origins_its_queries_use(real_edits_dir: Path, distractors) -> None:
    full = pairs_set(real_edits_dir / "pairs.jsonl")
    small = pairs_set(real_edits_dir / "pairs.jsonl", distractors, limit=3, max_distractors=2)
    assert small.kind == "pairs" and small.query_paths == full.query_paths[:3]
    n_origins = len(small.reference_paths) - small.n_distractors
    assert small.n_distractors == 2 and small.reference_paths[n_origins:] == distractors[:2]
    assert small.positives.shape == (3, n_origins + 2)
    assert small.positives[:, :n_origins].any(axis=0).all() and not small.positives[:, n_origins:].any()
    assert small.positives.any(axis=1).all()


def test_every_method_is_scored_at_every_level(hash_run, photos, distractors) -> None:
    dataset, result = hash_run
    assert [(p.series, p.label) for p in result.points] == [(m, lab) for lab in LABELS for m in ("pdq", "phash")]
    assert [p.level for p in result.points if p.series == "pdq"] == [0, 1, 1, 2]
    for p in result.points:
        assert p.n_queries == len(photos) and p.n_references == len(photos) + len(distractors)
        assert p.top1_low <= p.top1 <= p.top1_high and p.recall_at_threshold is None
    # A copy of the photo itself is found by both hashes; the strong crop defeats them for some queries.
    assert all(result.point(m, "clean").top1 == 1.0 for m in ("pdq", "phash"))
    assert min(result.point(m, LABELS[-1]).top1 for m in ("pdq", "phash")) < 1.0
    assert [[lvl["label"] for lvl in fam["levels"]] for fam in result.suite] == [["clean"], LABELS[1:2], LABELS[2:]]
    assert result.dataset["methods"] == ["pdq", "phash"] and result.dataset["compared_policies"] == ["squash"]
    assert result.findings() == {}  # one resize policy: nothing to compare
    assert result.provenance["seed"] == 0 and result.provenance["embedder"] is None
    assert result.provenance["manifest_digest"] == dataset.manifest_digest


def test_failures_are_the_most_confident_errors_with_thumbnails_at_the_strongest_level(hash_run) -> None:
    _, result = hash_run
    assert result.failures
    strongest = {"clean", *(e.levels[-1].label for e in SUITE)}
    for series in ("pdq", "phash"):
        for label in LABELS:
            mine = [f for f in result.failures if f.series == series and f.label == label]
            point = result.point(series, label)
            assert len(mine) == min(2, round((1 - point.top1) * point.n_queries))
            margins = [f.wrong_score - f.true_score for f in mine]
            assert all(m >= 0 for m in margins) and margins == sorted(margins, reverse=True)
            for f in mine:
                assert f.wrong_reference != f.true_reference
                thumbs = (f.query_thumb, f.wrong_thumb, f.true_thumb)
                if label in strongest:
                    assert all(t is not None and t[:2] == b"\xff\xd8" for t in thumbs)  # JPEG thumbnails
                else:
                    assert thumbs == (None, None, None)
                assert "query_thumb" not in f.to_dict()


def test_attacks_depend_on_the_query_not_its_position(hash_run, photos, distractors) -> None:
    crop = SUITE[1].levels[0]
    a = np.random.default_rng(attack_seed(0, crop, photos[0].name)).random(3)
    b = np.random.default_rng(attack_seed(0, crop, photos[0].name)).random(3)
    assert (a == b).all()
    assert (a != np.random.default_rng(attack_seed(1, crop, photos[0].name)).random(3)).all()
    _, result = hash_run
    shuffled = _run(photos_set(photos[::-1], distractors[::-1]), n_failures=0)
    # Same attacked pixels, so the same metrics (up to the order of a float mean over queries).
    assert [p.to_dict() for p in shuffled.points] == [pytest.approx(p.to_dict(), abs=1e-12) for p in result.points]
    assert shuffled.failures == []


def test_unreadable_files_are_noted_and_left_out(photos, tmp_path) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    result = _run(photos_set([*photos[:3], bad]))
    assert any(n.startswith("query skipped") and "broken.jpg" in n for n in result.notes)
    assert any(n.startswith("reference skipped") for n in result.notes)
    assert result.dataset["n_queries"] == 3 and result.dataset["n_references"] == 3
    assert result.point("pdq", "clean").top1 == 1.0


def test_run_settings_are_checked_before_any_work(photos) -> None:
    dataset = photos_set(photos[:2])
    assert [m.name for m in build_methods(None)] == ["pdq", "phash"]
    with pytest.raises(ConfigError, match="unknown or unavailable method"):
        build_methods(None, ["id2"])
    with pytest.raises(ConfigError, match="resize policy"):
        _run(dataset, resize_policy="stretch")
    with pytest.raises(ConfigError, match="needs an embedder"):
        _run(dataset, compare_policies=("pad",))
    pdq = build_methods(None, ["pdq"])
    with pytest.raises(ConfigError, match="unique"):
        run_robustness(dataset, pdq + pdq, SUITE, progress=False)
