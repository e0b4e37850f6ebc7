"""Attacks: determinism, intensity ordering on real photos, validation, specs and chains."""

from __future__ import annotations

import numpy as np
import pytest

from id2_plugin.media import MediaLimits, load_image, to_rgb_array, unletterbox
from id2_plugin.robustness import (
    JPEG,
    Border,
    Canvas,
    Chain,
    Crop,
    Downscale,
    GaussianBlur,
    Identity,
    LogoWatermark,
    Mirror,
    Rotate,
    TextWatermark,
    default_suite,
    parse_attack_spec,
    subsample_levels,
)
from id2_plugin.robustness.attacks import BUILTIN_ATTACKS, DEFAULT_LEVELS


@pytest.fixture(scope="module")
def photos(photo_paths) -> list[np.ndarray]:
    # Spread over the sorted list so the images differ in content and aspect ratio.
    return [np.asarray(load_image(p)) for p in photo_paths[::200][:4]]


def _change(original: np.ndarray, attacked: np.ndarray) -> float:
    """Mean absolute pixel change after serving the attacked image at the original size."""
    h, w = original.shape[:2]
    # Framing off: the attack's own change is measured, not what the normaliser's unletterbox leaves of it.
    back = to_rgb_array(attacked, (w, h), limits=MediaLimits(unletterbox=False))
    return float(np.abs(back.astype(np.int16) - original.astype(np.int16)).mean())


@pytest.mark.parametrize("entry", default_suite(), ids=lambda e: e.family)
def test_same_seed_same_pixels_and_input_untouched(entry, photos):
    img = photos[0]
    before = img.copy()
    for attack in entry.levels:
        a, b = attack(img, 123), attack(img, 123)
        assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3
        assert np.array_equal(a, b), attack.label
        # A Generator or SeedSequence built from the same seed gives the same pixels too.
        assert np.array_equal(a, attack(img, np.random.default_rng(123)))
    assert np.array_equal(img, before)


@pytest.mark.parametrize("attack", [Crop(0.7), TextWatermark(0.5), LogoWatermark(0.5)], ids=repr)
def test_random_attacks_depend_on_the_seed(attack, photos):
    outs = [attack(photos[1], s) for s in range(6)]
    distinct = {o.tobytes() for o in outs}
    assert len(distinct) >= 3, "seed should move the crop / watermark"


@pytest.mark.parametrize("entry", default_suite(), ids=lambda e: e.family)
def test_stronger_level_changes_more_pixels(entry, photos):
    """Across the levels of each family (mildest first) the mean pixel change strictly increases.

    A chain varies its second step, so its change is measured against the first step alone (same child
    seed: ``Chain(a, Identity())``), otherwise a geometric first step would mask the second.
    """
    if not entry.levels[0].graded:
        pytest.skip(f"{entry.family} levels are orientations, not strengths")
    changes = []
    for attack in entry.levels:
        if isinstance(attack, Chain):
            per_image = [_change(Chain(attack.a, Identity())(img, 7), attack(img, 7)) for img in photos]
        else:
            per_image = [_change(img, attack(img, 7)) for img in photos]
        changes.append(float(np.mean(per_image)))
    assert all(c > 0 for c in changes), (entry.family, changes)
    assert all(b > a for a, b in zip(changes, changes[1:])), (entry.family, changes)


def test_downscale_serves_the_small_image(photos):
    img = photos[0]
    h, w = img.shape[:2]
    out = Downscale(0.25)(img)
    assert out.shape[:2] == (round(h * 0.25), round(w * 0.25))
    assert Crop(0.5)(img, 0).shape[:2] == (round(h * 0.5), round(w * 0.5))


def test_jpeg_and_blur_are_real_operations(photos):
    img = photos[2]
    # JPEG output is a valid decode at the same size; q30 loses more than q90.
    assert JPEG(90)(img).shape == img.shape
    assert _change(img, JPEG(30)(img)) > _change(img, JPEG(90)(img)) > 0

    # Blur removes high frequencies: the Laplacian energy drops.
    def lap(x: np.ndarray) -> float:
        g = x.astype(np.float32).mean(axis=2)
        return float(np.abs(4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]).mean())

    assert lap(GaussianBlur(2)(img)) < 0.5 * lap(img)


def test_watermark_is_local_and_opacity_scales(photos):
    img = photos[3]
    light = TextWatermark(0.2, position="center", text="SAMPLE")(img)
    heavy = TextWatermark(0.8, position="center", text="SAMPLE")(img)
    diff = np.abs(heavy.astype(int) - img.astype(int)).sum(axis=2) > 0
    # Only a band of the image is touched, and it is in the middle.
    assert 0.005 < diff.mean() < 0.3
    ys, xs = np.nonzero(diff)
    h, w = diff.shape
    assert abs(ys.mean() - h / 2) < 0.15 * h and abs(xs.mean() - w / 2) < 0.2 * w
    assert _change(img, heavy) > 2 * _change(img, light)
    logo = LogoWatermark(0.8, position="top_left", size=0.3)(img)
    ys, xs = np.nonzero(np.abs(logo.astype(int) - img.astype(int)).sum(axis=2))
    assert ys.max() < 0.5 * h and xs.max() < 0.5 * w


def test_chain_applies_both_steps_in_order(photos):
    img = photos[0]
    chain = Chain(Downscale(0.5), JPEG(30))
    assert chain.name == "downscale+jpeg" and chain.label == "downscale:0.5+jpeg:30" and chain.intensity == 30
    out = chain(img, 5)
    assert out.shape[:2] == Downscale(0.5)(img).shape[:2]
    assert np.array_equal(out, JPEG(30)(Downscale(0.5)(img)))
    assert np.array_equal(chain(img, 5), out)


def test_labels_equality_and_validation():
    assert JPEG(30).label == "jpeg:30" and GaussianBlur(0.5).label == "blur:0.5"
    assert JPEG(30) == JPEG(30) and JPEG(30) != JPEG(50) and hash(JPEG(30)) == hash(JPEG(30))
    assert TextWatermark(0.5, text="a") != TextWatermark(0.5, text="b")
    for bad in (
        lambda: JPEG(0),
        lambda: GaussianBlur(-1),
        lambda: Downscale(1.5),
        lambda: Crop(0),
        lambda: TextWatermark(1.2),
        lambda: LogoWatermark(0.5, position="middle"),
    ):
        with pytest.raises(ValueError):
            bad()
    with pytest.raises(ValueError, match="uint8"):
        JPEG(50)(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        JPEG(50)(np.zeros((8, 8), np.uint8))


def test_default_suite_covers_the_issue_levels():
    suite = {e.family: [a.intensity for a in e.levels] for e in default_suite()}
    assert suite["jpeg"] == [90, 70, 50, 30]
    assert suite["blur"] == [0.5, 1, 2, 3]
    assert suite["downscale"] == [0.75, 0.5, 0.35, 0.25]
    assert min(suite["watermark_text"]) == 0.2 and max(suite["watermark_logo"]) == 0.8
    assert "crop" in suite and "downscale+jpeg" in suite and "crop+jpeg" in suite
    assert set(DEFAULT_LEVELS) <= set(BUILTIN_ATTACKS)


def test_parse_attack_spec_and_subsample():
    entry = parse_attack_spec("jpeg:90,50,30", BUILTIN_ATTACKS)
    assert entry.family == "jpeg" and [a.label for a in entry.levels] == ["jpeg:90", "jpeg:50", "jpeg:30"]
    chain = parse_attack_spec("downscale:0.5+jpeg:70,30", BUILTIN_ATTACKS)
    assert chain.family == "downscale+jpeg" and [a.label for a in chain.levels] == [
        "downscale:0.5+jpeg:70",
        "downscale:0.5+jpeg:30",
    ]
    for bad in ("nope:1", "jpeg", "jpeg:", "jpeg:500", "crop:0.5,0.6+jpeg:30", "a:1+b:2+c:3"):
        with pytest.raises(ValueError):
            parse_attack_spec(bad, BUILTIN_ATTACKS)
    levels = default_suite()[0].levels
    assert [a.label for a in subsample_levels(levels, 2)] == ["jpeg:70", "jpeg:30"]
    assert subsample_levels(levels, 1)[0].label == "jpeg:30"
    assert subsample_levels(levels, 0) == levels


@pytest.mark.parametrize(
    "attack",
    [
        Border(0.2, sides="letterbox"),
        Border(0.15, sides="pillarbox"),
        Border(0.1, colour=(40, 90, 160), sides="frame"),
        Canvas(2.0),
    ],
    ids=repr,
)
def test_framing_attacks_add_uniform_borders_that_unletterbox_removes(attack, photos):
    """Bars and canvases come off exactly; where a photo's own edge is as dark as a black bar the cut may
    stop short (the safe side), but it never cuts into the photo."""
    from PIL import Image

    exact = 0
    for img in photos:
        out = attack(img, 3)
        assert out.shape[0] >= img.shape[0] and out.shape[1] >= img.shape[1] and out.size > img.size
        back = np.asarray(unletterbox(Image.fromarray(out)))
        assert back.shape[0] >= img.shape[0] - 4 and back.shape[1] >= img.shape[1] - 4, attack.label
        exact += back.shape == img.shape and np.array_equal(back, img)
    assert exact >= len(photos) - 1, attack.label


def test_orientation_attacks_are_exact_quarter_turns_and_flips(photos):
    img = photos[1]
    assert np.array_equal(np.rot90(Rotate(90)(img), k=-1), img)
    assert np.array_equal(Rotate(180)(img), img[::-1, ::-1])
    assert Rotate(270)(img).shape == (img.shape[1], img.shape[0], 3)
    assert np.array_equal(Mirror()(img)[:, ::-1], img) and Mirror().label == "mirror"
    for bad in (lambda: Rotate(45), lambda: Border(0), lambda: Border(0.1, sides="top"), lambda: Canvas(1.0)):
        with pytest.raises(ValueError):
            bad()
