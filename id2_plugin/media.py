"""Media normaliser: anything image-like -> RGB ``uint8`` array, with typed errors.

Accepted sources: a path (``str``/``os.PathLike``), ``bytes``/``bytearray``/``memoryview``, a binary file
object, a ``PIL.Image.Image`` or a numpy array (HxW, HxWx1, HxWx3, HxWx4; uint8, uint16, bool or float in
[0, 1]). Formats: whatever Pillow decodes (JPEG, PNG, WebP, GIF - first frame, BMP, TIFF, ...), detected from
the content, never from the file extension. EXIF orientation is applied. Palette, grayscale, CMYK, 16-bit
and alpha images become RGB (alpha is composited on white, which is how a viewer shows it).

Every failure is a :class:`~id2_plugin.errors.MediaError`: decompression bombs (``max_pixels``), truncated
or empty files, non-images. The host process never sees a raw Pillow/OSError.
"""

from __future__ import annotations

import errno
import io
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ._files import sha256_file as sha256_file  # public: the content key
from ._files import sha256_file_or_none as sha256_file_or_none
from .errors import MediaError
from .framing import BorderTrim, border_box

MediaLike = Union[str, os.PathLike, bytes, bytearray, memoryview, IO[bytes], Image.Image, np.ndarray]
ResizePolicy = Literal["squash", "center_crop", "pad"]

#: Default decompression-bomb limit: 64 megapixels (a 8000x8000 photo). Pillow's own default warns at
#: ~89 MP and only errors at twice that; a moderation host wants a hard, lower and explicit limit.
DEFAULT_MAX_PIXELS = 64_000_000
#: The largest ``max_pixels`` that means anything: the decoder turns Pillow's DecompressionBombWarning (at
#: ``Image.MAX_IMAGE_PIXELS``) into an error, so a higher limit would be silently ignored.
PILLOW_MAX_PIXELS = int(Image.MAX_IMAGE_PIXELS or 2**31 - 1)
#: Longest side over shortest side: decoding costs memory per row and per column besides per pixel (Pillow
#: keeps a pointer per row and whole-row filter buffers), so a 1 x 60,000,000 PNG of 117 KB, under the
#: pixel limit, peaked at 1.9 GB; at 100:1 a 64 MP image is at most 80,000 px long. Long screenshots
#: (1:30) and panoramas (1:12) fit; nothing squashed from 100:1 to a square is a photo's likeness anyway.
DEFAULT_MAX_ASPECT_RATIO = 100
#: Refuse to read files larger than this many bytes (a compressed bomb still costs I/O).
DEFAULT_MAX_BYTES = 100 * 1024 * 1024

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".jfif", ".pgm", ".ppm"}
)


@dataclass(frozen=True)
class MediaLimits:
    """Resource limits applied while decoding untrusted media, and the framing step of normalisation."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES
    #: cut uniform borders (letterbox, pillarbox, solid canvases) before resizing; see :mod:`.framing`
    unletterbox: bool = True
    #: per-channel difference (0-255) still counted as the border colour (JPEG / video noise)
    border_tolerance: int = BorderTrim.tolerance
    #: refuse images whose longest side exceeds this many times the shortest, before decoding them
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO

    @classmethod
    def from_config(cls, media: Any) -> MediaLimits:
        """The limits a ``media`` config section (:class:`~id2_plugin.config.MediaConfig`) asks for."""
        return cls(media.max_pixels, media.max_bytes, media.unletterbox, media.border_tolerance, media.max_aspect_ratio)


def describe(source: Any) -> str:
    """A short human-readable name for ``source`` used in error messages and reports."""
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    if isinstance(source, Image.Image):
        return f"<PIL {source.mode} {source.size[0]}x{source.size[1]}>"
    if isinstance(source, np.ndarray):
        return f"<array {source.dtype} {source.shape}>"
    name = getattr(source, "name", None)
    return str(name) if isinstance(name, str) else f"<{type(source).__name__}>"


def _check_size(width: int, height: int, label: str, limits: MediaLimits, why: str = "") -> None:
    """Refuse, before any pixel is decoded, sizes whose decoding cost the limits do not allow."""
    if width * height > limits.max_pixels:
        raise MediaError(f"{width}x{height} exceeds the {limits.max_pixels}-pixel limit{why}", label)
    if max(width, height) > limits.max_aspect_ratio * max(min(width, height), 1):
        raise MediaError(
            f"{width}x{height}: the long side is more than {limits.max_aspect_ratio:g} times the short "
            f"one (the aspect-ratio limit){why}",
            label,
        )


def _read_bytes(source: Any, limits: MediaLimits) -> bytes:
    label = describe(source)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise MediaError("file not found", label) from None
        except OSError as exc:
            raise MediaError(f"cannot access file ({exc.strerror or exc})", label) from None
        if path.is_dir():
            raise MediaError("is a directory, not an image", label)
        if size > limits.max_bytes:
            raise MediaError(f"file is {size} bytes, above the {limits.max_bytes}-byte limit", label)
        try:
            return path.read_bytes()
        except OSError as exc:
            raise MediaError(f"cannot read file ({exc.strerror or exc})", label) from None
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif hasattr(source, "read"):
        try:
            data = source.read(limits.max_bytes + 1)
        except Exception as exc:  # file objects from hosts can raise anything
            raise MediaError(f"cannot read stream ({exc})", label) from None
        if not isinstance(data, (bytes, bytearray)):
            raise MediaError("stream must be opened in binary mode", label)
        data = bytes(data)
    else:
        raise MediaError(f"unsupported media type {type(source).__name__}", label)
    if len(data) > limits.max_bytes:
        raise MediaError(f"input exceeds the {limits.max_bytes}-byte limit", label)
    return data


def _array_to_rgb(arr: np.ndarray, label: str, limits: MediaLimits) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise MediaError(f"array must be HxW, HxWx1, HxWx3 or HxWx4, got shape {arr.shape}", label)
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise MediaError("array has zero size", label)
    _check_size(arr.shape[1], arr.shape[0], label, limits)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise MediaError("float array contains NaN or infinity", label)
        arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise MediaError(f"unsupported array dtype {arr.dtype}", label)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    elif arr.shape[2] == 4:
        alpha = arr[:, :, 3:4].astype(np.float32) / 255.0
        arr = (arr[:, :, :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha) + 0.5).astype(np.uint8)
    return np.ascontiguousarray(arr)


def _pil_to_rgb(img: Image.Image, label: str, limits: MediaLimits) -> Image.Image:
    _check_size(img.width, img.height, label, limits)
    try:
        img = ImageOps.exif_transpose(img) or img
    except Exception:  # a broken EXIF block must not make the image unusable
        pass
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.uint32)
        shift = 8 if arr.max(initial=0) <= 0xFFFF else 24
        img = Image.fromarray((arr >> shift).astype(np.uint8), "L")
    elif mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")  # CMYK, YCbCr, L, 1, I;16 (after scaling), LAB, HSV
    return img


def load_image(source: MediaLike, *, limits: MediaLimits | None = None) -> Image.Image:
    """Decode ``source`` into an RGB :class:`PIL.Image.Image` at its own size.

    Raises :class:`MediaError` for anything that is not a decodable image within ``limits``.
    """
    limits = limits or MediaLimits()
    label = describe(source)
    if isinstance(source, np.ndarray):
        return Image.fromarray(_array_to_rgb(source, label, limits), "RGB")
    if isinstance(source, Image.Image):
        try:
            source.load()
            return _pil_to_rgb(source, label, limits)
        except MediaError:
            raise
        except Exception as exc:
            raise MediaError(f"cannot convert image ({exc})", label) from None
    data = _read_bytes(source, limits)
    if not data:
        raise MediaError("empty input (0 bytes)", label)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            _check_size(img.width, img.height, label, limits, " (possible decompression bomb)")
            if getattr(img, "n_frames", 1) > 1:
                img.seek(0)  # animated GIF/WebP/TIFF: the first frame is the image a viewer shows first
            img.load()
    except MediaError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise MediaError(f"image too large, possible decompression bomb ({exc})", label) from None
    except UnidentifiedImageError:
        raise MediaError("not a recognised image format", label) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise MediaError(f"corrupt or truncated image ({exc})", label) from None
    except Exception as exc:  # decoders raise a zoo of types on hostile input
        raise MediaError(f"cannot decode image ({type(exc).__name__}: {exc})", label) from None
    try:
        return _pil_to_rgb(img, label, limits)
    except MediaError:
        raise
    except Exception as exc:
        raise MediaError(f"cannot convert image to RGB ({exc})", label) from None


def resize_rgb(img: Image.Image, size: tuple[int, int], policy: ResizePolicy = "squash") -> Image.Image:
    """Resize an RGB image to ``size`` = (width, height).

    ``squash`` stretches the whole image (the paper's preprocessing: nothing is cut off, so an edit that
    crops or pads is still comparable); ``center_crop`` keeps the aspect ratio and cuts the borders;
    ``pad`` keeps the aspect ratio and pads with black.
    """
    if img.size == size:
        return img
    if policy == "squash":
        return img.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
    if policy == "center_crop":
        return ImageOps.fit(img, size, Image.Resampling.BICUBIC)
    if policy == "pad":
        return ImageOps.pad(img, size, Image.Resampling.BICUBIC, color=(0, 0, 0))
    raise ValueError(f"unknown resize policy {policy!r}; expected squash, center_crop or pad")


def to_rgb_array(
    source: MediaLike,
    size: tuple[int, int] | None = None,
    *,
    policy: ResizePolicy = "squash",
    limits: MediaLimits | None = None,
) -> np.ndarray:
    """Normalise ``source`` to an ``HxWx3 uint8`` RGB array, resized to ``size`` (width, height) if given."""
    limits = limits or MediaLimits()
    img = load_image(source, limits=limits)
    if limits.unletterbox:
        img = unletterbox(img, BorderTrim(tolerance=limits.border_tolerance))
    if size is not None:
        img = resize_rgb(img, size, policy)
    return np.array(img, dtype=np.uint8)  # writable: torch.from_numpy warns on read-only buffers


#: Borders are found on a copy of about this many pixels: the cut is then exact to the reduction factor,
#: and a 64-megapixel upload costs no more than a 2-megapixel one.
_DETECT_PIXELS = 2_000_000


def unletterbox(img: Image.Image, trim: BorderTrim | None = None) -> Image.Image:
    """``img`` without its uniform borders (:func:`~id2_plugin.framing.border_box`); ``img`` itself if none."""
    factor = max(1, math.ceil(math.sqrt(img.width * img.height / _DETECT_PIXELS)))
    small = img.reduce(factor) if factor > 1 else img
    top, bottom, left, right = border_box(np.asarray(small), trim)
    if (top, bottom, left, right) == (0, small.height, 0, small.width):
        return img
    # Scaled back conservatively: a reduced line mixing border and content counts as content.
    box = (left * factor, top * factor, min(img.width, right * factor), min(img.height, bottom * factor))
    return img.crop(box)


def iter_image_files(paths: list[str | os.PathLike] | tuple[str | os.PathLike, ...]) -> list[Path]:
    """Expand files and folders (recursively, sorted) into image file paths by extension.

    Files named explicitly are kept whatever their extension: the decoder, not the name, decides. What
    cannot be walked is left out; :func:`scan_image_files` also says what that was.
    """
    return scan_image_files(paths).files


@dataclass(frozen=True)
class FileScan:
    """Image files found under some paths, and every path that could not be walked (one line each)."""

    files: list[Path]
    problems: list[str]


def scan_image_files(paths: list[str | os.PathLike] | tuple[str | os.PathLike, ...]) -> FileScan:
    """Like :func:`iter_image_files`, reporting unreadable folders, dangling links and symlink loops.

    Symbolic links to folders are followed; one that points back to a folder being walked is a loop.
    """
    files: list[Path] = []
    problems: list[str] = []
    exts = scanned_extensions()
    for p in paths:
        path = Path(p)
        if path.is_dir():
            found: list[Path] = []
            _walk(path, frozenset({_dir_key(path)}), found, problems, exts)
            files.extend(sorted(found))
        elif path.exists():
            files.append(path)
        else:
            problems.append(_missing(path))
    return FileScan(files, problems)


def _dir_key(path: Path) -> tuple[int, int]:
    st = path.stat()
    return (st.st_dev, st.st_ino)


def _missing(path: Path) -> str:
    """Why ``path``, which does not resolve, does not (a dangling link, a loop, or nothing there)."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return f"{path}: dangling symbolic link" if path.is_symlink() else f"{path}: not found"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return f"{path}: symbolic link loop"
        return f"{path}: cannot access ({exc.strerror or exc})"
    return f"{path}: cannot access"


#: Pillow formats a folder scan leaves out (a file named explicitly is still tried): stubs that need a
#: separate handler, documents rendered by Ghostscript (EPS), video (MPEG), metadata only (IPTC)
_UNSCANNED_FORMATS = frozenset({"BUFR", "EPS", "FITS", "GRIB", "HDF5", "IPTC", "MPEG", "WMF"})


def scanned_extensions() -> frozenset[str]:
    """File extensions a folder scan picks: every format the installed Pillow opens, with the plugins
    registered so far (AVIF, and HEIF once e.g. ``pillow_heif.register_heif_opener()`` ran), so a file that
    works when named is not skipped without a word inside a folder."""
    Image.init()
    opened = set(Image.OPEN) - _UNSCANNED_FORMATS
    return IMAGE_EXTENSIONS | {ext for ext, fmt in Image.registered_extensions().items() if fmt in opened}


def _walk(
    folder: Path, ancestors: frozenset[tuple[int, int]], found: list[Path], problems: list[str], exts: frozenset[str]
) -> None:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        problems.append(f"{folder}: cannot read folder ({exc.strerror or exc})")
        return
    for entry in entries:
        path = Path(entry.path)
        if not path.exists():
            problems.append(_missing(path))
        elif path.is_dir():
            key = _dir_key(path)
            if key in ancestors:
                problems.append(f"{path}: symbolic link loop (points back to {os.path.realpath(path)})")
            else:
                _walk(path, ancestors | {key}, found, problems, exts)
        elif path.is_file() and path.suffix.lower() in exts:
            found.append(path)
