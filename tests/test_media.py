"""Media normaliser: every accepted input kind and every documented failure, on real photos."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from id2_plugin.errors import MediaError
from id2_plugin.media import MediaLimits, iter_image_files, load_image, resize_rgb, to_rgb_array


@pytest.fixture(scope="module")
def photo(photo_paths: list[Path]) -> Path:
    return photo_paths[0]


@pytest.fixture(scope="module")
def photo_img(photo: Path) -> Image.Image:
    return Image.open(photo).convert("RGB")


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_all_input_kinds_agree(photo: Path, photo_img: Image.Image) -> None:
    ref = to_rgb_array(photo, (256, 256))
    assert ref.shape == (256, 256, 3) and ref.dtype == np.uint8
    data = photo.read_bytes()
    for src in (
        str(photo),
        photo,
        data,
        bytearray(data),
        memoryview(data),
        io.BytesIO(data),
        photo_img,
        np.asarray(photo_img),
    ):
        np.testing.assert_array_equal(to_rgb_array(src, (256, 256)), ref)


@pytest.mark.parametrize(
    "fmt,kw",
    [("PNG", {}), ("WEBP", {"lossless": True}), ("BMP", {}), ("TIFF", {}), ("GIF", {}), ("JPEG", {"quality": 95})],
)
def test_formats_decode_close_to_original(photo_img: Image.Image, fmt: str, kw: dict) -> None:
    out = np.asarray(load_image(_encode(photo_img, fmt, **kw)), dtype=np.int16)
    assert out.shape == (photo_img.height, photo_img.width, 3)
    # GIF quantises to 256 colours and JPEG is lossy: bounded error; lossless formats are exact.
    tol = {"GIF": 20, "JPEG": 6}.get(fmt, 0)
    assert np.abs(out - np.asarray(photo_img, dtype=np.int16)).mean() <= tol


def test_gif_first_frame(photo_img: Image.Image) -> None:
    small = photo_img.resize((64, 64))
    frames = [small, Image.new("RGB", (64, 64), (255, 0, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100)
    out = np.asarray(load_image(buf.getvalue()), dtype=np.int16)
    assert np.abs(out - np.asarray(small, dtype=np.int16)).mean() < 20


def test_exif_orientation_applied(photo_img: Image.Image) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    data = _encode(photo_img, "JPEG", quality=95, exif=exif.tobytes())
    out = load_image(data)
    assert out.size == (photo_img.height, photo_img.width)


def test_modes_to_rgb(photo_img: Image.Image) -> None:
    small = photo_img.resize((48, 32))
    for mode in ("L", "P", "CMYK", "RGBA", "LA", "1", "I;16"):
        img = (
            small.convert(mode)
            if mode != "I;16"
            else Image.fromarray((np.asarray(small.convert("L"), dtype=np.uint16) * 257))
        )
        fmt = "TIFF" if mode in ("CMYK", "I;16") else "PNG"
        out = load_image(_encode(img, fmt))
        assert out.mode == "RGB" and out.size == (48, 32), mode
    gray16 = load_image(_encode(Image.fromarray(np.full((8, 8), 65535, np.uint16)), "PNG"))
    assert np.asarray(gray16).min() == 255  # 16-bit white stays white, not clipped garbage


def test_alpha_composited_on_white() -> None:
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 0] = 255  # transparent red
    out = to_rgb_array(_encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert (out == 255).all()


def test_arrays_of_every_dtype() -> None:
    assert to_rgb_array(np.ones((5, 6), bool)).shape == (5, 6, 3)
    assert to_rgb_array(np.full((5, 6, 1), 0.5, np.float32))[0, 0, 0] == 128
    assert to_rgb_array(np.full((5, 6, 3), 65535, np.uint16))[0, 0, 0] == 255
    with pytest.raises(MediaError, match="NaN"):
        to_rgb_array(np.full((5, 6), np.nan))
    with pytest.raises(MediaError, match="shape"):
        to_rgb_array(np.zeros((5, 6, 2), np.uint8))
    with pytest.raises(MediaError, match="dtype"):
        to_rgb_array(np.zeros((5, 6), np.complex64))


def test_decompression_bomb_refused() -> None:
    # A 20000x20000 PNG of one colour compresses to a few hundred KB: a classic bomb.
    big = Image.new("L", (20000, 20000))
    data = _encode(big, "PNG")
    with pytest.raises(MediaError, match="decompression bomb"):
        load_image(data)
    with pytest.raises(MediaError, match="pixel limit"):
        load_image(_encode(Image.new("RGB", (100, 100)), "PNG"), limits=MediaLimits(max_pixels=5000))


def test_extreme_aspect_ratios_refused_before_decoding() -> None:
    """A long side over 100 times the short one is refused whatever the input kind; 100:1 itself decodes."""
    assert load_image(_encode(Image.new("RGB", (3000, 30)), "PNG")).size == (3000, 30)
    for size in ((3030, 30), (30, 3030)):
        with pytest.raises(MediaError, match="aspect-ratio limit"):
            load_image(_encode(Image.new("RGB", size), "PNG"))
        with pytest.raises(MediaError, match="aspect-ratio limit"):
            load_image(Image.new("RGB", size))
        with pytest.raises(MediaError, match="aspect-ratio limit"):
            load_image(np.zeros((size[1], size[0], 3), np.uint8))
    assert load_image(_encode(Image.new("RGB", (3030, 30)), "PNG"), limits=MediaLimits(max_aspect_ratio=200))


def test_bad_inputs(tmp_path: Path, photo: Path) -> None:
    data = photo.read_bytes()
    cases = {
        "empty": (b"", "empty"),
        "truncated": (data[: len(data) // 3], "truncated|corrupt"),
        "text": (b"hello, I am not an image" * 10, "not a recognised image"),
        "header only": (data[:20], "truncated|corrupt|not a recognised"),
    }
    for name, (payload, pattern) in cases.items():
        with pytest.raises(MediaError, match=pattern):
            load_image(payload)
    with pytest.raises(MediaError, match="not found"):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(MediaError, match="directory"):
        load_image(tmp_path)
    with pytest.raises(MediaError, match="limit"):
        load_image(data, limits=MediaLimits(max_bytes=100))
    with pytest.raises(MediaError, match="unsupported media type"):
        load_image(12345)  # type: ignore[arg-type]
    with pytest.raises(MediaError, match="binary mode"):
        load_image(io.StringIO("text"))  # type: ignore[arg-type]


def test_wrong_extension_is_decoded_by_content(tmp_path: Path, photo: Path) -> None:
    wrong = tmp_path / "actually_jpeg.png"
    wrong.write_bytes(photo.read_bytes())
    np.testing.assert_array_equal(to_rgb_array(wrong), to_rgb_array(photo))
    fake = tmp_path / "fake.jpg"
    fake.write_text("<html>not an image</html>")
    with pytest.raises(MediaError, match="fake.jpg"):
        load_image(fake)


def test_resize_policies(photo_img: Image.Image) -> None:
    wide = photo_img.resize((300, 100))
    for policy in ("squash", "center_crop", "pad"):
        assert resize_rgb(wide, (64, 64), policy).size == (64, 64)
    padded = np.asarray(resize_rgb(wide, (64, 64), "pad"))
    assert padded[0].max() == 0  # top rows are padding
    with pytest.raises(ValueError):
        resize_rgb(wide, (64, 64), "stretch")  # type: ignore[arg-type]


def test_iter_image_files(tmp_path: Path, photo: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "x.JPG").write_bytes(photo.read_bytes())
    (tmp_path / "a" / "y.png").write_bytes(b"")
    (tmp_path / "a" / "notes.txt").write_text("skip")
    found = iter_image_files([tmp_path])
    assert [p.name for p in found] == ["x.JPG", "y.png"]
    assert iter_image_files([tmp_path / "a" / "notes.txt"]) == [tmp_path / "a" / "notes.txt"]


def test_folder_scans_pick_every_format_pillow_opens(tmp_path: Path, photo: Path) -> None:
    from PIL import features

    img = Image.open(photo).convert("RGB")
    kinds = [
        k
        for k, feature in (("avif", "avif"), ("jp2", "jpg_2000"), ("qoi", None))
        if feature is None or features.check(feature)
    ]
    assert "avif" in kinds  # this Pillow writes AVIF: the case reported (named it worked, in a folder it was skipped)
    for kind in kinds:
        img.save(tmp_path / f"p.{kind}")
    (tmp_path / "clip.mpg").write_bytes(b"\x00\x00\x01\xba" + bytes(60))  # video: Pillow's MPEG is a stub
    found = iter_image_files([tmp_path])
    assert sorted(p.suffix for p in found) == sorted(f".{k}" for k in kinds)
    for p in found:  # each is read like a named file
        assert to_rgb_array(p).shape == (img.height, img.width, 3)
