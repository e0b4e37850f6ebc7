"""Fuzzing the media normaliser: whatever bytes, file objects or arrays arrive, the result is an RGB uint8
array or a :class:`MediaError`; never another exception type. Bounded: a fixed number of examples each."""

from __future__ import annotations

import io
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from id2_plugin.errors import MediaError
from id2_plugin.media import MediaLimits, to_rgb_array

ROOT = Path(__file__).resolve().parent.parent
PHOTO = sorted((ROOT.parent / "shared" / "data" / "photos").glob("*.jpg"))[:1]

BOUNDED = settings(
    max_examples=150,
    deadline=timedelta(seconds=10),
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _seed_files() -> list[bytes]:
    """Small valid files of every format the normaliser documents, made from a real photo crop."""
    img = Image.open(PHOTO[0]).convert("RGB").resize((48, 32)) if PHOTO else Image.new("RGB", (48, 32), (90, 30, 200))
    out = []
    for fmt, im, kw in [
        ("JPEG", img, {"quality": 80}),
        ("PNG", img.convert("RGBA"), {}),
        ("GIF", img.convert("P"), {}),
        ("WEBP", img, {}),
        ("BMP", img, {}),
        ("TIFF", img.convert("I;16"), {}),
        ("PNG", img.convert("LA"), {}),
    ]:
        buf = io.BytesIO()
        im.save(buf, fmt, **kw)
        out.append(buf.getvalue())
    return out


SEEDS = _seed_files()
LIMITS = MediaLimits(max_pixels=4_000_000, max_bytes=1_000_000)


def _check(source: object, limits: MediaLimits = LIMITS) -> None:
    try:
        arr = to_rgb_array(source, (24, 24), limits=limits)  # type: ignore[arg-type]
    except MediaError:
        return
    assert arr.dtype == np.uint8 and arr.shape == (24, 24, 3)


@st.composite
def mutated_files(draw: st.DrawFn) -> bytes:
    """A valid seed file with some bytes overwritten, a slice cut out or the tail dropped."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for pos, value in draw(st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(0, 255)), max_size=12)):
        data[pos] = value
    if draw(st.booleans()):
        a = draw(st.integers(0, len(data)))
        b = draw(st.integers(a, min(len(data), a + 64)))
        del data[a:b]
    return bytes(data[: draw(st.integers(0, len(data)))] if draw(st.booleans()) else data)


@BOUNDED
@given(mutated_files())
def test_mutated_image_files(data: bytes) -> None:
    _check(data)
    _check(io.BytesIO(data))


@BOUNDED
@given(st.binary(max_size=2048))
def test_arbitrary_bytes(data: bytes) -> None:
    _check(data)


@BOUNDED
@given(st.sampled_from(SEEDS), st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1))
def test_headers_claiming_huge_sizes(seed: bytes, width: int, height: int) -> None:
    # A PNG whose IHDR claims another size: a decompression bomb must be refused, not decoded.
    png = bytearray(SEEDS[1])
    png[16:20], png[20:24] = width.to_bytes(4, "big"), height.to_bytes(4, "big")
    _check(bytes(png))


ARRAY_DTYPES = st.sampled_from([np.uint8, np.uint16, np.bool_, np.float32, np.float64, np.int32, np.int8, np.complex64])


@BOUNDED
@given(st.data())
def test_arrays_of_any_shape_and_dtype(data: st.DataObject) -> None:
    shape = tuple(data.draw(st.lists(st.integers(0, 9), min_size=0, max_size=4)))
    dtype = np.dtype(data.draw(ARRAY_DTYPES))
    n = int(np.prod(shape)) if shape else 1
    raw = data.draw(st.binary(min_size=n * dtype.itemsize, max_size=n * dtype.itemsize))
    _check(np.frombuffer(raw, dtype=dtype).reshape(shape).copy())


@BOUNDED
@given(st.integers(1, 3000), st.integers(1, 3000), st.integers(1, 5_000_000), st.integers(1, 400))
def test_size_limits(width: int, height: int, max_pixels: int, max_aspect: int) -> None:
    """Refused exactly when over the pixel limit or the aspect-ratio limit."""
    limits = MediaLimits(max_pixels=max_pixels, max_aspect_ratio=max_aspect)
    allowed = width * height <= max_pixels and max(width, height) <= max_aspect * min(width, height)
    try:
        arr = to_rgb_array(np.zeros((height, width, 3), np.uint8), limits=limits)
    except MediaError:
        assert not allowed
        return
    assert arr.shape == (height, width, 3) and allowed


@pytest.mark.parametrize("source", [None, 3, "", Path("/"), object(), io.StringIO("text"), memoryview(b"")])
def test_odd_sources(source: object) -> None:
    _check(source)
