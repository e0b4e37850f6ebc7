"""Image attacks for the robustness suite: parameterised, seeded ``RGB array -> RGB array`` callables.

Every attack has a family ``name`` and an ``intensity`` (the family's natural parameter: JPEG quality, blur
sigma, downscale factor, watermark opacity, kept crop fraction), and a ``label`` such as ``jpeg:30``.
Calling an attack with the same image and seed always returns the same pixels, which is what lets the
suite resume from the latent cache (keys are pixel hashes) and regenerate failure examples.

Only numpy and Pillow are used, so importing this module is cheap (it is loaded as a built-in plugin).
"""

from __future__ import annotations

import io
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

SeedLike = int | np.random.Generator | np.random.SeedSequence | None

#: Named watermark positions; ``random`` picks one of them (and a small jitter) from the attack's rng.
POSITIONS = ("top_left", "top_right", "bottom_left", "bottom_right", "center")


def _as_rng(seed: SeedLike) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        got = f"{rgb.dtype} {rgb.shape}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
        raise ValueError(f"attacks take H x W x 3 uint8 RGB arrays, got {got}")
    if rgb.shape[0] < 2 or rgb.shape[1] < 2:
        raise ValueError(f"image too small to attack: {rgb.shape}")
    return rgb


class Attack(ABC):
    """One attack at one intensity. Subclasses set :attr:`name` and write :meth:`apply`.

    ``attack(rgb, seed)`` validates the input, builds a generator from ``seed`` (an int, a
    ``SeedSequence`` or a ``Generator``) and returns a new contiguous ``uint8`` RGB array; the input is
    never modified. The output may have a different size (downscale, crop).
    """

    #: family name, e.g. ``jpeg``; also the registry name of the factory that builds it
    name: str = "attack"
    #: whether the family's levels grow stronger in order (False for orientations such as rotations)
    graded: bool = True

    def __init__(self, intensity: float) -> None:
        self.intensity = float(intensity)

    @property
    def label(self) -> str:
        """``family:intensity``, e.g. ``jpeg:30`` or ``blur:0.5``."""
        return f"{self.name}:{self.intensity:g}"

    def params(self) -> dict[str, Any]:
        """Parameters besides the intensity that change the output (part of equality and reports)."""
        return {}

    def __call__(self, rgb: np.ndarray, seed: SeedLike = 0) -> np.ndarray:
        out = self.apply(_check_rgb(rgb), _as_rng(seed))
        return np.ascontiguousarray(out, dtype=np.uint8)

    @abstractmethod
    def apply(self, rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Attack a validated ``H x W x 3`` uint8 array using only ``rng`` for randomness."""

    def _key(self) -> tuple[Any, ...]:
        return (type(self), self.name, self.intensity, tuple(sorted(self.params().items())))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Attack) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key()[1:])

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({self.intensity:g}{extra})"


class _OneLevel(Attack):
    """An attack with no strength to vary: one level, labelled by the family name alone."""

    default_intensity = 0.0

    def __init__(self, intensity: float | None = None) -> None:
        super().__init__(self.default_intensity if intensity is None else intensity)

    @property
    def label(self) -> str:
        return self.name


class Identity(_OneLevel):
    """No change: the clean baseline every curve starts from."""

    name = "clean"

    def apply(self, rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return rgb.copy()


class JPEG(Attack):
    """Re-encode as JPEG at ``quality`` (1-100; lower is stronger), 4:2:0 chroma like most platforms."""

    name = "jpeg"

    def __init__(self, quality: float) -> None:
        if not 1 <= quality <= 100:
            raise ValueError(f"JPEG quality must be in [1, 100], got {quality}")
        super().__init__(quality)

    def apply(self, rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="JPEG", quality=int(round(self.intensity)), subsampling=2)
        buf.seek(0)
        with Image.open(buf) as img:
            return np.asarray(img.convert("RGB"))


class GaussianBlur(Attack):
    """Gaussian blur with standard deviation ``sigma`` pixels (higher is stronger)."""

    name = "blur"

    def __init__(self, sigma: float) -> None:
        if sigma < 0:
            raise ValueError(f"blur sigma must be >= 0, got {sigma}")
        super().__init__(sigma)

    def apply(self, rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        # Pillow's GaussianBlur "radius" is the standard deviation of the kernel.
        return np.asarray(Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(radius=self.intensity)))


class Downscale(Attack):
    """Shrink by ``factor`` (0-1; lower is stronger) and serve the small image as the query.

    The output keeps its reduced size on purpose: the identification normaliser has to upsize it, which
    is exactly what happens to a thumbnail or a re-shared low-resolution copy.
    """

    name = "downscale"

    def __init__(self, factor: float) -> None:
        if not 0 < factor <= 1:
            raise ValueError(f"downscale factor must be in (0, 1], got {factor}")
        super().__init__(factor)

    def apply(self, rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = rgb.shape[:2]
        size = (max(8, round(w * self.intensity)), max(8, round(h * self.intensity)))
        return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0))


class Crop(Attack):
    """Keep a ``keep`` fraction (0-1; lower is stronger) of each side, at a seeded random offset."""

    name = "crop"

    def __init__(self, keep: float) -> None:
        if not 0 < keep <= 1:
            raise ValueError(f"crop keep fraction must be in (0, 1], got {keep}")
        super().__init__(keep)

    def apply(self, rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = rgb.shape[:2]
        ch, cw = max(2, round(h * self.intensity)), max(2, round(w * self.intensity))
        # The offset is drawn as a fraction so the same seed crops the same relative region at any level.
        fy, fx = rng.random(2)
        y, x = int(round(fy * (h - ch))), int(round(fx * (w - cw)))
        return rgb[y : y + ch, x : x + cw].copy()


#: Ways :class:`Border` frames an image; ``random`` picks one from the attack's rng.
BORDER_SIDES = ("letterbox", "pillarbox", "frame")


class Border(Attack):
    """Uniform bars of ``fraction`` (0-1) of the image's side added on two or four sides: a photo shown
    letterboxed or pillarboxed in a video or a fixed-ratio post. ``sides`` is ``letterbox`` (top and
    bottom), ``pillarbox`` (left and right), ``frame`` (all four) or ``random``."""

    name = "border"

    def __init__(self, fraction: float, *, colour: tuple[int, int, int] = (0, 0, 0), sides: str = "random") -> None:
        if not 0 < fraction <= 1:
            raise ValueError(f"border fraction must be in (0, 1], got {fraction}")
        if sides != "random" and sides not in BORDER_SIDES:
            raise ValueError(f"border sides {sides!r}: expected random or one of {', '.join(BORDER_SIDES)}")
        super().__init__(fraction)
        self.colour, self.sides = tuple(int(c) for c in colour), sides

    def params(self) -> dict[str, Any]:
        return {"colour": self.colour, "sides": self.sides}

    def apply(self, rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        sides = self.sides if self.sides != "random" else BORDER_SIDES[int(rng.integers(len(BORDER_SIDES)))]
        h, w = rgb.shape[:2]
        by = round(h * self.intensity) if sides != "pillarbox" else 0
        bx = round(w * self.intensity) if sides != "letterbox" else 0
        return _paste(rgb, (h + 2 * by, w + 2 * bx), (by, bx), self.colour)


class Canvas(Attack):
    """The image pasted at a seeded random place onto a uniform canvas ``scale`` (> 1) times its size on
    each side (a product shot on white, a screenshot of a picture on a page)."""

    name = "canvas"

    def __init__(self, scale: float, *, colour: tuple[int, int, int] = (255, 255, 255)) -> None:
        if not 1 < scale <= 8:
            raise ValueError(f"canvas scale must be in (1, 8], got {scale}")
        super().__init__(scale)
        self.colour = tuple(int(c) for c in colour)

    def params(self) -> dict[str, Any]:
        return {"colour": self.colour}

    def apply(self, rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = rgb.shape[:2]
        ch, cw = round(h * self.intensity), round(w * self.intensity)
        fy, fx = rng.random(2)
        return _paste(rgb, (ch, cw), (int(fy * (ch - h)), int(fx * (cw - w))), self.colour)


def _paste(rgb: np.ndarray, shape: tuple[int, int], at: tuple[int, int], colour: tuple[int, ...]) -> np.ndarray:
    """``rgb`` on a ``shape`` (H, W) canvas of ``colour``, its top-left corner at ``at`` (y, x)."""
    out = np.empty((*shape, 3), np.uint8)
    out[:] = colour
    (y, x), (h, w) = at, rgb.shape[:2]
    out[y : y + h, x : x + w] = rgb
    return out


class Rotate(Attack):
    """A quarter-turn rotation by ``degrees`` (90, 180, 270, counter-clockwise), as a phone or an editor
    turns a picture. Levels are orientations, not strengths: they are not ordered."""

    name = "rotate"
    graded = False

    def __init__(self, degrees: float) -> None:
        if degrees not in (90, 180, 270):
            raise ValueError(f"rotation must be 90, 180 or 270 degrees, got {degrees}")
        super().__init__(degrees)

    def apply(self, rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.rot90(rgb, k=int(self.intensity) // 90)


class Mirror(_OneLevel):
    """A left-right flip (the one level is 1)."""

    name = "mirror"
    default_intensity = 1.0

    def apply(self, rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return rgb[:, ::-1]


class _Overlay(Attack):
    """Alpha-blend an RGBA overlay (built by :meth:`_overlay`) at ``opacity`` = intensity (0-1)."""

    def __init__(self, opacity: float, *, size: float, position: str = "random") -> None:
        if not 0 <= opacity <= 1:
            raise ValueError(f"watermark opacity must be in [0, 1], got {opacity}")
        if not 0 < size <= 1:
            raise ValueError(f"watermark size must be a fraction in (0, 1], got {size}")
        if position != "random" and position not in POSITIONS:
            raise ValueError(f"watermark position {position!r}: expected random or one of {', '.join(POSITIONS)}")
        super().__init__(opacity)
        self.size = float(size)
        self.position = position

    def params(self) -> dict[str, Any]:
        return {"size": self.size, "position": self.position}

    @abstractmethod
    def _overlay(self, side: int, rng: np.random.Generator) -> Image.Image:
        """An RGBA image (alpha = shape) sized from ``side`` = ``size`` x the image's shorter side."""

    def _place(self, img_wh: tuple[int, int], ov_wh: tuple[int, int], rng: np.random.Generator) -> tuple[int, int]:
        (w, h), (ow, oh) = img_wh, ov_wh
        pos = self.position if self.position != "random" else POSITIONS[int(rng.integers(len(POSITIONS)))]
        margin = int(0.04 * min(w, h))
        jitter = rng.uniform(-1.0, 1.0, 2) * margin  # drawn even for fixed positions: same rng use either way
        x = {"left": margin, "right": w - ow - margin}.get(pos.split("_")[-1], (w - ow) // 2)
        y = {"top": margin, "bottom": h - oh - margin}.get(pos.split("_")[0], (h - oh) // 2)
        x = int(np.clip(x + jitter[0], 0, max(0, w - ow)))
        y = int(np.clip(y + jitter[1], 0, max(0, h - oh)))
        return x, y

    def apply(self, rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = rgb.shape[:2]
        overlay = self._overlay(max(4, int(round(self.size * min(h, w)))), rng)
        # A shape wider than the image is shrunk to fit rather than silently cut.
        if overlay.width > w or overlay.height > h:
            s = min(w / overlay.width, h / overlay.height)
            overlay = overlay.resize((max(1, int(overlay.width * s)), max(1, int(overlay.height * s))))
        x, y = self._place((w, h), overlay.size, rng)
        ov = np.asarray(overlay, dtype=np.float32)
        alpha = ov[:, :, 3:4] / 255.0 * self.intensity
        out = rgb.astype(np.float32)
        region = out[y : y + overlay.height, x : x + overlay.width]
        region[:] = region * (1.0 - alpha) + ov[:, :, :3] * alpha
        return np.clip(out + 0.5, 0, 255).astype(np.uint8)


class TextWatermark(_Overlay):
    """Text overlay (white with a dark outline, like a stock-photo or channel mark) at ``opacity``.

    ``size`` is the text height as a fraction of the shorter image side; ``text`` ``None`` picks one of a
    few typical marks from the rng.
    """

    name = "watermark_text"
    TEXTS = ("© stockphoto", "SAMPLE", "@channel_name", "shared via app", "CONFIDENTIAL")

    def __init__(
        self, opacity: float, *, size: float = 0.12, position: str = "random", text: str | None = None
    ) -> None:
        super().__init__(opacity, size=size, position=position)
        self.text = text

    def params(self) -> dict[str, Any]:
        return dict(super().params(), text=self.text)

    def _overlay(self, side: int, rng: np.random.Generator) -> Image.Image:
        text = self.text if self.text is not None else self.TEXTS[int(rng.integers(len(self.TEXTS)))]
        font = ImageFont.load_default(size=max(6, side))
        stroke = max(1, side // 12)
        left, top, right, bottom = font.getbbox(text, stroke_width=stroke)
        img = Image.new("RGBA", (right - left + 2, bottom - top + 2), (0, 0, 0, 0))
        ImageDraw.Draw(img).text(
            (-left + 1, -top + 1),
            text,
            font=font,
            fill=(255, 255, 255, 255),
            stroke_width=stroke,
            stroke_fill=(20, 20, 20, 255),
        )
        return img


class LogoWatermark(_Overlay):
    """A synthetic logo (coloured disc, emblem and initials) at ``opacity``; ``size`` = logo side fraction."""

    name = "watermark_logo"

    def __init__(self, opacity: float, *, size: float = 0.25, position: str = "random") -> None:
        super().__init__(opacity, size=size, position=position)

    def _overlay(self, side: int, rng: np.random.Generator) -> Image.Image:
        hue = rng.integers(40, 230, 3)
        colour = (int(hue[0]), int(hue[1]), int(hue[2]), 255)
        img = Image.new("RGBA", (side, side), (0, 0, 0, 0))
        d = ImageDraw.Draw(img)
        d.ellipse((0, 0, side - 1, side - 1), fill=colour, outline=(255, 255, 255, 255), width=max(1, side // 20))
        s = side
        d.polygon([(s * 0.5, s * 0.16), (s * 0.8, s * 0.62), (s * 0.2, s * 0.62)], fill=(255, 255, 255, 255))
        font = ImageFont.load_default(size=max(6, side // 5))
        d.text((s * 0.5, s * 0.8), "ID", font=font, fill=(255, 255, 255, 255), anchor="mm")
        return img


class Chain(Attack):
    """``b(a(x))``: two attacks applied in order, each with its own child generator of the seed.

    ``intensity`` defaults to ``b``'s (a chain family usually varies its second step); the label lists
    both steps, e.g. ``downscale:0.5+jpeg:50``.
    """

    def __init__(self, a: Attack, b: Attack, intensity: float | None = None) -> None:
        super().__init__(b.intensity if intensity is None else intensity)
        self.a, self.b = a, b
        self.name = f"{a.name}+{b.name}"

    @property
    def label(self) -> str:
        return f"{self.a.label}+{self.b.label}"

    def params(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b}

    def _key(self) -> tuple[Any, ...]:
        return (Chain, self.name, self.intensity, self.a._key(), self.b._key())

    def __repr__(self) -> str:
        return f"Chain({self.a!r}, {self.b!r})"

    def apply(self, rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        ra, rb = rng.spawn(2)
        return self.b(self.a(rgb, ra), rb)


class FunctionAttack(Attack):
    """Wrap ``fn(rgb, rng, intensity) -> rgb`` as an attack: the easy path for plugin authors."""

    def __init__(
        self, name: str, intensity: float, fn: Callable[[np.ndarray, np.random.Generator, float], np.ndarray]
    ) -> None:
        super().__init__(intensity)
        self.name = name
        self.fn = fn

    def params(self) -> dict[str, Any]:
        return {"fn": getattr(self.fn, "__qualname__", repr(self.fn))}

    def apply(self, rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        out = self.fn(rgb, rng, self.intensity)
        return _check_rgb(np.asarray(out))


class SuiteEntry(NamedTuple):
    """One attack family of a suite: its name and its attacks ordered from mildest to strongest."""

    family: str
    levels: tuple[Attack, ...]


#: Built-in families, levels listed mildest first (the order curves are drawn in).
DEFAULT_LEVELS: dict[str, tuple[float, ...]] = {
    "jpeg": (90, 70, 50, 30),
    "blur": (0.5, 1, 2, 3),
    "downscale": (0.75, 0.5, 0.35, 0.25),
    "crop": (0.9, 0.8, 0.7, 0.6),
    "watermark_text": (0.2, 0.4, 0.6, 0.8),
    "watermark_logo": (0.2, 0.4, 0.6, 0.8),
    "border": (0.1, 0.2, 0.3),
    "canvas": (1.25, 1.5, 2.0),
    "rotate": (90, 180, 270),
    "mirror": (1,),
}

BUILTIN_ATTACKS: dict[str, Callable[[float], Attack]] = {
    "clean": Identity,
    "jpeg": JPEG,
    "blur": GaussianBlur,
    "downscale": Downscale,
    "crop": Crop,
    "watermark_text": TextWatermark,
    "watermark_logo": LogoWatermark,
    "border": Border,
    "canvas": Canvas,
    "rotate": Rotate,
    "mirror": Mirror,
}


def default_suite() -> list[SuiteEntry]:
    """Every built-in family at its default levels, plus two chains (a re-shared thumbnail and a cropped
    re-upload: ``downscale:0.5`` then JPEG, ``crop:0.8`` then JPEG, at the JPEG levels)."""
    suite = [
        SuiteEntry(name, tuple(BUILTIN_ATTACKS[name](v) for v in levels)) for name, levels in DEFAULT_LEVELS.items()
    ]
    for first in (Downscale(0.5), Crop(0.8)):
        chain = tuple(Chain(first, JPEG(q)) for q in DEFAULT_LEVELS["jpeg"])
        suite.append(SuiteEntry(chain[0].name, chain))
    return suite


def subsample_levels(levels: Sequence[Attack], n: int) -> tuple[Attack, ...]:
    """``n`` levels spread evenly up to the strongest, which is always kept (4 levels, n=2 -> 2nd and 4th)."""
    if n <= 0 or n >= len(levels):
        return tuple(levels)
    idx = sorted({max(0, round(len(levels) * (i + 1) / n) - 1) for i in range(n)})
    return tuple(levels[i] for i in idx)


def parse_attack_spec(spec: str, factories: dict[str, Callable[[float], Attack]]) -> SuiteEntry:
    """Parse ``name:v1,v2,...`` (one family) or ``a:va+b:v1,v2`` (a chain whose second step varies).

    Names resolve through ``factories`` (normally :func:`id2_plugin.plugins.attack_factories`), so attacks
    registered by plugins are usable from the command line.
    """

    def build(name: str, value: str) -> Attack:
        if name not in factories:
            raise ValueError(f"unknown attack {name!r}; registered: {', '.join(sorted(factories))}")
        try:
            return factories[name](float(value))
        except ValueError as exc:
            raise ValueError(f"attack {name}:{value}: {exc}") from None

    def split(part: str) -> tuple[str, list[str]]:
        name, sep, values = part.strip().partition(":")
        vals = [v for v in values.split(",") if v.strip()] if sep else []
        if not name or not vals:
            raise ValueError(f"attack spec {spec!r}: expected NAME:V1[,V2...] or A:V+B:V1[,V2...]")
        return name, vals

    parts = spec.split("+")
    if len(parts) == 1:
        name, vals = split(parts[0])
        return SuiteEntry(name, tuple(build(name, v) for v in vals))
    if len(parts) == 2:
        (na, va), (nb, vb) = split(parts[0]), split(parts[1])
        if len(va) != 1:
            raise ValueError(f"attack spec {spec!r}: the first step of a chain takes one value")
        first = build(na, va[0])
        levels = tuple(Chain(first, build(nb, v)) for v in vb)
        return SuiteEntry(levels[0].name, levels)
    raise ValueError(f"attack spec {spec!r}: chains have two steps")
