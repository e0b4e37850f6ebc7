"""Pixel-space edit operations used by the offline proxy-edit generator (see :mod:`.make_pairs`).

They imitate, crudely and without any generative model, the kinds of change a text-guided edit makes:
content edits (objects inserted from other photos, removed, moved or duplicated; background replaced;
re-framing and zoom-out; pose-like local warps; text and shapes), style edits (colour grading,
painterly/cartoon/sketch stylisation, posterisation) and degradations (JPEG, blur, rescaling, noise).
Every function takes and returns an ``H x W x 3`` RGB ``uint8`` array and draws all randomness from the
given ``numpy`` generator, so a recipe is reproducible from its seed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .._lazy import require

Image = np.ndarray
Donor = Callable[[], Image]

_WORDS = (
    "SALE",
    "hello",
    "Diffusion",
    "2024",
    "OPEN",
    "cat",
    "summer",
    "NEW",
    "love",
    "AI",
    "#edit",
    "wow",
    "Paris",
    "free",
    "STOP",
    "happy",
    "Tokyo",
    "photo",
    "fake",
    "art",
)


def _cv2() -> Any:
    return require("cv2")


def _soft_mask(h: int, w: int, rng: np.random.Generator, kind: str | None = None) -> np.ndarray:
    """A feathered ``h x w`` float mask in [0, 1]: an ellipse, a rounded blob or a rectangle."""
    cv2 = _cv2()
    kind = kind or str(rng.choice(["ellipse", "blob", "rect"]))
    m = np.zeros((h, w), np.float32)
    if kind == "rect":
        m[:] = 1.0
        b = max(1, min(h, w) // 12)
        m[:b], m[-b:], m[:, :b], m[:, -b:] = 0.0, 0.0, 0.0, 0.0
    elif kind == "blob":
        pts = []
        n = int(rng.integers(5, 9))
        for i in range(n):
            a = 2 * np.pi * (i + rng.uniform(-0.3, 0.3)) / n
            r = rng.uniform(0.55, 0.95)
            pts.append([w / 2 + r * w / 2 * np.cos(a), h / 2 + r * h / 2 * np.sin(a)])
        cv2.fillPoly(m, [np.asarray(pts, np.int32)], 1.0)
    else:
        cv2.ellipse(m, (w // 2, h // 2), (max(1, int(w * 0.47)), max(1, int(h * 0.47))), 0, 0, 360, 1.0, -1)
    k = max(3, (min(h, w) // 8) | 1)
    return cv2.GaussianBlur(m, (k, k), 0)  # type: ignore[no-any-return]


def _paste(dst: Image, patch: Image, mask: np.ndarray, x: int, y: int) -> Image:
    """Alpha-composite ``patch`` at (x, y), clipping at the borders."""
    h, w = patch.shape[:2]
    H, W = dst.shape[:2]
    x0, y0, x1, y1 = max(0, x), max(0, y), min(W, x + w), min(H, y + h)
    if x1 <= x0 or y1 <= y0:
        return dst
    out = dst.astype(np.float32)
    p = patch[y0 - y : y1 - y, x0 - x : x1 - x].astype(np.float32)
    a = mask[y0 - y : y1 - y, x0 - x : x1 - x, None]
    out[y0:y1, x0:x1] = out[y0:y1, x0:x1] * (1 - a) + p * a
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _resize(img: Image, w: int, h: int) -> Image:
    cv2 = _cv2()
    interp = cv2.INTER_AREA if w * h < img.shape[0] * img.shape[1] else cv2.INTER_CUBIC
    return cv2.resize(img, (max(1, w), max(1, h)), interpolation=interp)  # type: ignore[no-any-return]


def _random_box(h: int, w: int, rng: np.random.Generator, lo: float, hi: float) -> tuple[int, int, int, int]:
    """A random box (x, y, bw, bh) whose sides are ``lo..hi`` of the image's sides."""
    bw = max(8, int(w * rng.uniform(lo, hi)))
    bh = max(8, int(h * rng.uniform(lo, hi)))
    x = int(rng.integers(0, max(1, w - bw + 1)))
    y = int(rng.integers(0, max(1, h - bh + 1)))
    return x, y, bw, bh


# -- content edits -----------------------------------------------------------------------------------
def insert_object(img: Image, rng: np.random.Generator, donor: Donor) -> Image:
    """Paste 1-3 feathered regions cut from other photos (object insertion, "add a dog")."""
    h, w = img.shape[:2]
    for _ in range(int(rng.integers(1, 4))):
        src = donor()
        sx, sy, sw, sh = _random_box(*src.shape[:2], rng, 0.25, 0.6)
        patch = src[sy : sy + sh, sx : sx + sw]
        scale = rng.uniform(0.18, 0.5) * min(h, w) / max(sw, sh)
        patch = _resize(patch, int(sw * scale), int(sh * scale))
        ph, pw = patch.shape[:2]
        mask = _soft_mask(ph, pw, rng)
        img = _paste(
            img, patch, mask, int(rng.integers(-pw // 4, w - 3 * pw // 4)), int(rng.integers(-ph // 4, h - 3 * ph // 4))
        )
    return img


def remove_object(img: Image, rng: np.random.Generator, donor: Donor | None = None) -> Image:
    """Inpaint 1-2 blob regions from their surroundings (object removal, "remove the person")."""
    cv2 = _cv2()
    h, w = img.shape[:2]
    mask = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(1, 3))):
        x, y, bw, bh = _random_box(h, w, rng, 0.12, 0.35)
        mask[y : y + bh, x : x + bw] = np.maximum(
            mask[y : y + bh, x : x + bw], (_soft_mask(bh, bw, rng, "blob") > 0.5).astype(np.uint8) * 255
        )
    return cv2.inpaint(img, mask, 5, cv2.INPAINT_TELEA)  # type: ignore[no-any-return]


def move_region(img: Image, rng: np.random.Generator, donor: Donor | None = None) -> Image:
    """Move (and rescale) a region elsewhere, optionally filling where it was (re-composition, pose change)."""
    cv2 = _cv2()
    h, w = img.shape[:2]
    x, y, bw, bh = _random_box(h, w, rng, 0.25, 0.5)
    patch = img[y : y + bh, x : x + bw].copy()
    out = img
    if rng.random() < 0.6:
        hole = np.zeros((h, w), np.uint8)
        hole[y : y + bh, x : x + bw] = (_soft_mask(bh, bw, rng, "ellipse") > 0.5).astype(np.uint8) * 255
        out = cv2.inpaint(img, hole, 5, cv2.INPAINT_TELEA)
    s = rng.uniform(0.7, 1.4)
    patch = _resize(patch, int(bw * s), int(bh * s))
    if rng.random() < 0.3:
        patch = patch[:, ::-1]
    ph, pw = patch.shape[:2]
    return _paste(
        out,
        patch,
        _soft_mask(ph, pw, rng),
        int(rng.integers(-pw // 4, w - 3 * pw // 4)),
        int(rng.integers(-ph // 4, h - 3 * ph // 4)),
    )


def duplicate_region(img: Image, rng: np.random.Generator, donor: Donor | None = None) -> Image:
    """Copy a region to a second place ("two cats instead of one")."""
    h, w = img.shape[:2]
    x, y, bw, bh = _random_box(h, w, rng, 0.2, 0.45)
    patch = img[y : y + bh, x : x + bw]
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    s = rng.uniform(0.6, 1.1)
    patch = _resize(patch, int(bw * s), int(bh * s))
    ph, pw = patch.shape[:2]
    return _paste(
        img, patch, _soft_mask(ph, pw, rng), int(rng.integers(0, max(1, w - pw))), int(rng.integers(0, max(1, h - ph)))
    )


def _foreground_mask(img: Image, rng: np.random.Generator) -> np.ndarray:
    """A soft foreground mask from spectral-residual saliency, falling back to a central ellipse."""
    cv2 = _cv2()
    h, w = img.shape[:2]
    centre = _soft_mask(h, w, rng, "ellipse")
    try:
        ok, sal = cv2.saliency.StaticSaliencySpectralResidual_create().computeSaliency(img)
    except (AttributeError, cv2.error):
        ok = False
    if not ok:
        return centre
    sal = cv2.GaussianBlur(sal.astype(np.float32), (0, 0), max(2.0, min(h, w) / 40))
    sal = sal / (sal.max() + 1e-6)
    # Saliency alone is spotty: bias it towards the centre, where subjects usually are.
    fg = ((0.5 * sal + 0.5 * centre) > rng.uniform(0.3, 0.5)).astype(np.uint8)
    fg = cv2.morphologyEx(fg, cv2.MORPH_CLOSE, np.ones((15, 15), np.uint8))
    if fg.mean() < 0.08:
        return centre
    return cv2.GaussianBlur(fg.astype(np.float32), (0, 0), max(2.0, min(h, w) / 60))  # type: ignore[no-any-return]


def swap_background(img: Image, rng: np.random.Generator, donor: Donor) -> Image:
    """Keep the salient subject and replace the rest by another photo ("put it on a beach")."""
    cv2 = _cv2()
    h, w = img.shape[:2]
    bg = _resize(donor(), w, h)
    if rng.random() < 0.4:
        bg = cv2.GaussianBlur(bg, (0, 0), rng.uniform(1.0, 4.0))
    a = _foreground_mask(img, rng)[:, :, None]
    return np.clip(img * a + bg * (1 - a) + 0.5, 0, 255).astype(np.uint8)


def mix_side(img: Image, rng: np.random.Generator, donor: Donor) -> Image:
    """Replace one side of the picture by another photo with a soft seam (partial re-composition)."""
    h, w = img.shape[:2]
    other = _resize(donor(), w, h)
    frac = rng.uniform(0.2, 0.45)
    side = int(rng.integers(0, 4))
    ramp_len = max(4, int((w if side < 2 else h) * 0.08))
    n = w if side < 2 else h
    cut = int(n * frac)
    t = np.clip((np.arange(n) - cut) / ramp_len + 0.5, 0, 1).astype(np.float32)  # 0 = donor, 1 = original
    if side in (1, 3):
        t = t[::-1]
    a = t[None, :, None] if side < 2 else t[:, None, None]
    return np.clip(img * a + other * (1 - a) + 0.5, 0, 255).astype(np.uint8)


def local_warp(img: Image, rng: np.random.Generator, donor: Donor | None = None) -> Image:
    """A smooth random displacement field (pose / shape change, "make it jump")."""
    cv2 = _cv2()
    h, w = img.shape[:2]
    amp = rng.uniform(0.03, 0.08) * min(h, w)
    grid = int(rng.integers(2, 5))
    dx = cv2.resize(rng.normal(0, 1, (grid, grid)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC) * amp
    dy = cv2.resize(rng.normal(0, 1, (grid, grid)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC) * amp
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(img, xs + dx, ys + dy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)  # type: ignore[no-any-return]


def reframe(img: Image, rng: np.random.Generator, donor: Donor | None = None) -> Image:
    """Crop to 50-90% of the area with a new aspect ratio (re-framing)."""
    h, w = img.shape[:2]
    area = rng.uniform(0.5, 0.9)
    aspect = np.exp(rng.uniform(np.log(0.75), np.log(1.33)))
    cw = int(min(w, w * np.sqrt(area * aspect)))
    ch = int(min(h, h * np.sqrt(area / aspect)))
    x = int(rng.integers(0, w - cw + 1))
    y = int(rng.integers(0, h - ch + 1))
    out = img[y : y + ch, x : x + cw]
    return _resize(out, cw * max(w, h) // max(cw, ch), ch * max(w, h) // max(cw, ch))


def zoom_out(img: Image, rng: np.random.Generator, donor: Donor) -> Image:
    """Shrink the picture into a larger canvas filled by blurred reflection or another photo (outpainting)."""
    cv2 = _cv2()
    h, w = img.shape[:2]
    s = rng.uniform(0.55, 0.85)
    small = _resize(img, int(w * s), int(h * s))
    sh, sw = small.shape[:2]
    if rng.random() < 0.5:
        canvas = cv2.GaussianBlur(cv2.copyMakeBorder(small, h, h, w, w, cv2.BORDER_REFLECT), (0, 0), 6)
        cy, cx = h, w
        canvas = canvas[cy - (h - sh) // 2 : cy - (h - sh) // 2 + h, cx - (w - sw) // 2 : cx - (w - sw) // 2 + w].copy()
    else:
        canvas = _resize(donor(), w, h)
    x = int(rng.integers(0, w - sw + 1))
    y = int(rng.integers(0, h - sh + 1))
    return _paste(canvas, small, _soft_mask(sh, sw, rng, "rect"), x, y)


def tight_crop(img: Image, rng: np.random.Generator, donor: Donor | None = None) -> Image:
    """Keep 45-85% of each side around a random point ("zoom in on the dog"): much tighter than ``reframe``."""
    h, w = img.shape[:2]
    keep = rng.uniform(0.45, 0.85)
    aspect = np.exp(rng.uniform(np.log(0.8), np.log(1.25)))
    cw, ch = min(w, max(8, int(w * keep * np.sqrt(aspect)))), min(h, max(8, int(h * keep / np.sqrt(aspect))))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return _resize(img[y : y + ch, x : x + cw], cw * max(w, h) // max(cw, ch), ch * max(w, h) // max(cw, ch))


def restage(img: Image, rng: np.random.Generator, donor: Donor) -> Image:
    """Re-stage the subject, smaller and possibly re-posed, in a new scene ("the girl riding a bike in a park").

    The hardest edits seen in practice keep the subject but not the layout: the salient part of the photo
    becomes a third to two thirds of a new picture whose background comes from elsewhere.
    """
    cv2 = _cv2()
    h, w = img.shape[:2]
    fg = _foreground_mask(img, rng)
    ys, xs = np.nonzero(fg > 0.5)
    if len(xs):
        x0, x1, y0, y1 = int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1
    else:
        x0, x1, y0, y1 = w // 6, w - w // 6, h // 6, h - h // 6
    subject, alpha = img[y0:y1, x0:x1], fg[y0:y1, x0:x1]
    if rng.random() < 0.6:
        subject = local_warp(subject, rng)
    if rng.random() < 0.3:
        subject, alpha = subject[:, ::-1], alpha[:, ::-1]
    scale = rng.uniform(0.35, 0.75) * min(h / subject.shape[0], w / subject.shape[1])
    sw, sh = max(8, int(subject.shape[1] * scale)), max(8, int(subject.shape[0] * scale))
    subject = _resize(np.ascontiguousarray(subject), sw, sh)
    alpha = cv2.resize(np.ascontiguousarray(alpha), (sw, sh), interpolation=cv2.INTER_LINEAR)
    scene = _resize(donor(), w, h)
    if rng.random() < 0.4:
        scene = cv2.GaussianBlur(scene, (0, 0), rng.uniform(1.0, 3.0))
    return _paste(
        scene, subject, alpha, int(rng.integers(0, max(1, w - sw + 1))), int(rng.integers(0, max(1, h - sh + 1)))
    )


def overlay_text(img: Image, rng: np.random.Generator, donor: Donor | None = None) -> Image:
    """Draw 1-3 words in random fonts, sizes and colours (captions, watermarks, signs)."""
    cv2 = _cv2()
    out = img.copy()
    h, w = img.shape[:2]
    fonts = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_COMPLEX)
    for _ in range(int(rng.integers(1, 4))):
        word = str(rng.choice(_WORDS))
        scale = rng.uniform(0.6, 2.0) * min(h, w) / 256
        thick = int(rng.integers(1, 5))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        org = (int(rng.integers(0, max(1, w // 2))), int(rng.integers(h // 8, h)))
        cv2.putText(out, word, org, int(rng.choice(fonts)), scale, colour, thick, cv2.LINE_AA)
    return out


def overlay_shapes(img: Image, rng: np.random.Generator, donor: Donor | None = None) -> Image:
    """Semi-transparent circles, rectangles and strokes (stickers, doodles, added props)."""
    cv2 = _cv2()
    layer = img.copy()
    h, w = img.shape[:2]
    for _ in range(int(rng.integers(1, 5))):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = int(rng.integers(0, 3))
        cx, cy = int(rng.integers(0, w)), int(rng.integers(0, h))
        r = int(rng.uniform(0.05, 0.2) * min(h, w))
        if kind == 0:
            cv2.circle(layer, (cx, cy), r, colour, -1, cv2.LINE_AA)
        elif kind == 1:
            cv2.rectangle(layer, (cx - r, cy - r // 2), (cx + r, cy + r // 2), colour, -1)
        else:
            cv2.line(
                layer, (cx, cy), (int(rng.integers(0, w)), int(rng.integers(0, h))), colour, max(2, r // 4), cv2.LINE_AA
            )
    a = rng.uniform(0.5, 1.0)
    return np.clip(img * (1 - a) + layer * a + 0.5, 0, 255).astype(np.uint8)


# -- style edits ------------------------------------------------------------------------------------
def colour_grade(img: Image, rng: np.random.Generator, donor: Donor | None = None) -> Image:
    """Hue rotation, saturation, gamma, contrast and per-channel gains ("make it autumn", "at sunset")."""
    cv2 = _cv2()
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-40, 40)) % 180
    hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.3, 1.8), 0, 255)
    out = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32) / 255.0
    out = out ** rng.uniform(0.6, 1.6)
    out = (out - 0.5) * rng.uniform(0.7, 1.4) + 0.5 + rng.uniform(-0.12, 0.12)
    out = out * rng.uniform(0.8, 1.2, 3)
    return np.clip(out * 255 + 0.5, 0, 255).astype(np.uint8)


def monochrome(img: Image, rng: np.random.Generator, donor: Donor | None = None) -> Image:
    """Grayscale, sepia or duotone ("old photograph")."""
    g = img.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    kind = int(rng.integers(0, 3))
    if kind == 0:
        out = np.repeat(g[:, :, None], 3, axis=2)
    elif kind == 1:
        out = g[:, :, None] * np.array([1.07, 0.74, 0.43], np.float32)[None, None] + 20
    else:
        c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        t = (g / 255.0)[:, :, None]
        out = c0 * (1 - t) + c1 * t
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def posterize(img: Image, rng: np.random.Generator, donor: Donor | None = None) -> Image:
    """Reduce each channel to 2-4 bits (flat poster / pop-art look)."""
    bits = int(rng.integers(2, 5))
    shift = 8 - bits
    return ((img >> shift) << shift) + (1 << shift) // 2  # type: ignore[no-any-return]


def stylise(img: Image, rng: np.random.Generator, donor: Donor | None = None) -> Image:
    """One of OpenCV's non-photorealistic filters: watercolour, edge-preserving, pencil, oil, detail."""
    cv2 = _cv2()
    kind = int(rng.integers(0, 5))
    bgr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    if kind == 0:
        out = cv2.stylization(bgr, sigma_s=float(rng.uniform(30, 90)), sigma_r=float(rng.uniform(0.3, 0.6)))
    elif kind == 1:
        out = cv2.edgePreservingFilter(
            bgr, flags=1, sigma_s=float(rng.uniform(40, 120)), sigma_r=float(rng.uniform(0.3, 0.7))
        )
    elif kind == 2:
        _, out = cv2.pencilSketch(
            bgr, sigma_s=float(rng.uniform(30, 80)), sigma_r=0.07, shade_factor=float(rng.uniform(0.03, 0.08))
        )
    elif kind == 3:
        out = cv2.xphoto.oilPainting(bgr, int(rng.integers(4, 9)), int(rng.integers(1, 3)))
    else:
        out = cv2.detailEnhance(bgr, sigma_s=float(rng.uniform(10, 30)), sigma_r=float(rng.uniform(0.1, 0.3)))
    return cv2.cvtColor(out, cv2.COLOR_BGR2RGB)  # type: ignore[no-any-return]


def cartoon(img: Image, rng: np.random.Generator, donor: Donor | None = None) -> Image:
    """Bilateral smoothing, colour quantisation and dark edges (cartoon / anime look)."""
    cv2 = _cv2()
    smooth = img
    for _ in range(int(rng.integers(2, 5))):
        smooth = cv2.bilateralFilter(smooth, 7, 60, 7)
    q = int(rng.choice([24, 32, 48, 64]))
    smooth = (smooth // q) * q + q // 2
    gray = cv2.medianBlur(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), 5)
    edges = cv2.adaptiveThreshold(gray, 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY, 9, int(rng.integers(3, 9)))
    return cv2.bitwise_and(smooth.astype(np.uint8), smooth.astype(np.uint8), mask=edges)  # type: ignore[no-any-return]


# -- degradations -----------------------------------------------------------------------------------
def jpeg(img: Image, rng: np.random.Generator, donor: Donor | None = None) -> Image:
    cv2 = _cv2()
    ok, buf = cv2.imencode(
        ".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(25, 85))]
    )
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) if ok else img  # type: ignore[no-any-return]


def blur(img: Image, rng: np.random.Generator, donor: Donor | None = None) -> Image:
    return _cv2().GaussianBlur(img, (0, 0), rng.uniform(0.6, 2.2))  # type: ignore[no-any-return]


def rescale(img: Image, rng: np.random.Generator, donor: Donor | None = None) -> Image:
    h, w = img.shape[:2]
    s = rng.uniform(0.25, 0.7)
    return _resize(_resize(img, int(w * s), int(h * s)), w, h)


def noise(img: Image, rng: np.random.Generator, donor: Donor | None = None) -> Image:
    return np.clip(img + rng.normal(0, rng.uniform(3, 12), img.shape) + 0.5, 0, 255).astype(np.uint8)


def hflip(img: Image, rng: np.random.Generator, donor: Donor | None = None) -> Image:
    return np.ascontiguousarray(img[:, ::-1])


Op = Callable[..., Image]

#: name -> (function, relative weight); content edits are weighted above pure pixel changes on purpose.
CONTENT_OPS: dict[str, tuple[Op, float]] = {
    "insert": (insert_object, 3.0),
    "remove": (remove_object, 1.5),
    "move": (move_region, 2.0),
    "duplicate": (duplicate_region, 1.0),
    "background": (swap_background, 2.5),
    "mixside": (mix_side, 1.5),
    "warp": (local_warp, 2.0),
    "reframe": (reframe, 2.0),
    "zoomout": (zoom_out, 1.5),
    "text": (overlay_text, 1.0),
    "shapes": (overlay_shapes, 1.0),
    # Never drawn at random (weight 0): make_proxy_pairs(scene_prob=..., crop_prob=...) decides them on their
    # own streams.
    "restage": (restage, 0.0),
    "crop": (tight_crop, 0.0),
}
STYLE_OPS: dict[str, tuple[Op, float]] = {
    "grade": (colour_grade, 3.0),
    "mono": (monochrome, 1.0),
    "posterize": (posterize, 1.0),
    "stylise": (stylise, 3.0),
    "cartoon": (cartoon, 1.5),
}
DEGRADE_OPS: dict[str, tuple[Op, float]] = {
    "jpeg": (jpeg, 2.0),
    "blur": (blur, 1.0),
    "rescale": (rescale, 1.0),
    "noise": (noise, 1.0),
}


def _pick(ops: dict[str, tuple[Op, float]], rng: np.random.Generator) -> str:
    names = list(ops)
    w = np.array([ops[n][1] for n in names])
    return names[int(rng.choice(len(names), p=w / w.sum()))]


def sample_recipe(rng: np.random.Generator) -> list[str]:
    """Names of the pixel-space ops of one proxy edit, in order: content, style, flip (degradations come last)."""
    recipe: list[str] = []
    n_content = int(rng.choice([0, 1, 2, 3], p=[0.15, 0.5, 0.28, 0.07]))
    for _ in range(n_content):
        recipe.append(_pick(CONTENT_OPS, rng))
    n_style = int(rng.choice([0, 1, 2], p=[0.4, 0.48, 0.12]))
    for _ in range(n_style):
        recipe.append(_pick(STYLE_OPS, rng))
    if rng.random() < 0.25:
        recipe.append("flip")
    return recipe


def sample_degradations(rng: np.random.Generator) -> list[str]:
    n = int(rng.choice([0, 1, 2], p=[0.55, 0.35, 0.1]))
    return [_pick(DEGRADE_OPS, rng) for _ in range(n)]


def apply_op(name: str, img: Image, rng: np.random.Generator, donor: Donor) -> Image:
    """Apply the op called ``name`` (from any table, or ``flip``)."""
    if name == "flip":
        return hflip(img, rng)
    for table in (CONTENT_OPS, STYLE_OPS, DEGRADE_OPS):
        if name in table:
            return np.ascontiguousarray(table[name][0](img, rng, donor))
    raise KeyError(name)
