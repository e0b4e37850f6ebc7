"""The picture of an :class:`~id2_plugin.explanation.Explanation`: composed with Pillow, written as PNG or HTML.

Layout (every position is recorded in ``Explanation.panels`` so a reader - or a test - can find each part):
scores on top; query, reference and the latent cell-similarity heat map side by side; below, the SIFT
matches drawn between the two images (RANSAC inliers green, the other ratio-test matches faint red) and
the heat map's colour scale.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from .explanation import Explanation

PANEL = 320
MARGIN = 16
LINE = 22
#: cosine -> colour anchors (dark blue at 0, through teal and green, to yellow at 1), like viridis
_ANCHORS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], np.float32)
#: outlier match lines drawn at most (a wrong pair can have hundreds; the inliers are the point)
_MAX_OUTLIERS = 150


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def colourise(values: np.ndarray) -> np.ndarray:
    """Cosines (clipped to [0, 1]) -> ``... x 3`` uint8 colours along :data:`_ANCHORS`."""
    t = np.clip(np.asarray(values, np.float32), 0.0, 1.0) * (len(_ANCHORS) - 1)
    lo = np.minimum(t.astype(int), len(_ANCHORS) - 2)
    frac = (t - lo)[..., None]
    return (_ANCHORS[lo] * (1 - frac) + _ANCHORS[lo + 1] * frac + 0.5).astype(np.uint8)


def _heat_panel(cells: np.ndarray, query: Image.Image) -> Image.Image:
    """The cell map at panel size (cells kept square), blended over a grey query for orientation."""
    heat = Image.fromarray(colourise(cells)).resize((PANEL, PANEL), Image.Resampling.NEAREST)
    grey = query.convert("L").convert("RGB")
    return Image.blend(grey, heat, 0.7)


def _matches_panel(expl: Explanation, q: Image.Image, r: Image.Image, scale: float) -> Image.Image:
    panel = Image.new("RGB", (2 * PANEL + MARGIN, PANEL), (255, 255, 255))
    panel.paste(q, (0, 0))
    panel.paste(r, (PANEL + MARGIN, 0))
    if expl.local is None:
        return panel
    draw = ImageDraw.Draw(panel)
    order = np.argsort(expl.local.inlier_mask)  # outliers first, so inlier lines are drawn on top
    outliers = 0
    for i in order:
        inlier = bool(expl.local.inlier_mask[i])
        if not inlier and outliers >= _MAX_OUTLIERS:
            continue
        outliers += not inlier
        (qx, qy), (rx, ry) = expl.local.query_points[i] * scale, expl.local.reference_points[i] * scale
        colour = (0, 200, 0) if inlier else (230, 120, 120)
        draw.line((qx, qy, rx + PANEL + MARGIN, ry), fill=colour, width=2 if inlier else 1)
    return panel


def _legend(width: int) -> Image.Image:
    """Colour scale of the heat map, cosine 0 to 1."""
    img = Image.new("RGB", (width, 3 * LINE), (255, 255, 255))
    bar = colourise(np.linspace(0, 1, width)[None].repeat(LINE, 0))
    img.paste(Image.fromarray(bar), (0, LINE))
    draw = ImageDraw.Draw(img)
    draw.text((0, 0), "latent cell cosine", fill=(0, 0, 0), font=_font(14))
    draw.text((0, 2 * LINE + 2), "0", fill=(0, 0, 0), font=_font(13))
    draw.text((width - 10, 2 * LINE + 2), "1", fill=(0, 0, 0), font=_font(13))
    return img


def compose(expl: Explanation, images: np.ndarray) -> tuple[Image.Image, dict[str, tuple[int, int, int, int]]]:
    """The picture and where each part of it is."""
    q, r = (Image.fromarray(a).resize((PANEL, PANEL), Image.Resampling.BICUBIC) for a in images)
    lines = expl.summary()
    header = MARGIN + LINE * len(lines)
    width = MARGIN + 3 * (PANEL + MARGIN)
    height = header + 2 * (LINE + PANEL + MARGIN) + MARGIN
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, text in enumerate(lines):
        draw.text((MARGIN, MARGIN // 2 + i * LINE), text, fill=(0, 0, 0), font=_font(16))
    panels: dict[str, tuple[int, int, int, int]] = {}

    def place(name: str, label: str, img: Image.Image, x: int, y: int) -> None:
        draw.text((x, y), label, fill=(60, 60, 60), font=_font(14))
        canvas.paste(img, (x, y + LINE))
        panels[name] = (x, y + LINE, x + img.width, y + LINE + img.height)

    row1, row2 = header, header + LINE + PANEL + MARGIN
    place("query", f"query: {Path(expl.query).name}", q, MARGIN, row1)
    place("reference", f"reference: {Path(expl.reference).name}", r, MARGIN + PANEL + MARGIN, row1)
    if expl.cell_similarity is not None:
        place(
            "similarity",
            "latent cell similarity (over the query)",
            _heat_panel(expl.cell_similarity, q),
            MARGIN + 2 * (PANEL + MARGIN),
            row1,
        )
        place("legend", "", _legend(PANEL), MARGIN + 2 * (PANEL + MARGIN), row2)
    place(
        "matches",
        "local features: SIFT matches, RANSAC inliers in green",
        _matches_panel(expl, q, r, PANEL / images.shape[1]),
        MARGIN,
        row2,
    )
    return canvas, panels


def _metadata(expl: Explanation) -> PngInfo:
    """The numbers, machine-readable inside the PNG (tEXt chunks), beside the pixels."""
    info = PngInfo()
    info.add_text("id2-explain", json.dumps(expl.to_dict()))
    for name, value in expl.scores.items():
        info.add_text(f"score.{name}", f"{value:.6f}")
    if expl.inliers is not None:
        info.add_text("sift.inliers", str(expl.inliers))
    return info


def _html(expl: Explanation, png: bytes) -> str:
    rows = "".join(f"<tr><th>{html.escape(n)}</th><td>{v:.4f}</td></tr>" for n, v in expl.scores.items())
    if expl.inliers is not None:
        rows += f"<tr><th>SIFT inliers</th><td>{expl.inliers} of {expl.local.matches}</td></tr>"  # type: ignore[union-attr]
    text = "<br>".join(html.escape(line) for line in expl.summary())
    return (
        "<!doctype html><meta charset='utf-8'><title>id2-plugin explain</title>"
        f"<p>{text}</p><table>{rows}</table>"
        f"<img alt='explanation' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
        f"<script type='application/json' id='id2-explain'>{_script_json(expl.to_dict())}</script>\n"
    )


def _script_json(obj: Any) -> str:
    """JSON to embed in a ``<script>`` element, where entities are not decoded (``JSON.parse`` reads the text
    as is): ``<``, ``>`` and ``&`` become JSON escapes, so no ``</script>`` or ``<!--`` from a file name can
    end or change the element."""
    return json.dumps(obj).replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def render(expl: Explanation, images: np.ndarray, fmt: str) -> tuple[bytes, Explanation]:
    """The picture as PNG or HTML bytes, and ``expl`` with its panel positions."""
    if fmt not in ("png", "html"):
        raise ValueError(f"explain format {fmt!r}: expected png or html")
    canvas, panels = compose(expl, images)
    expl = dataclasses.replace(expl, panels=panels)
    buf = io.BytesIO()
    canvas.save(buf, "PNG", pnginfo=_metadata(expl))
    return (buf.getvalue() if fmt == "png" else _html(expl, buf.getvalue()).encode("utf-8")), expl


def write_explanation(expl: Explanation, images: np.ndarray, path: Path) -> Explanation:
    """Write the picture to ``path`` (.png or .html) atomically; the temporary file never outlives the call."""
    data, expl = render(dataclasses.replace(expl, out=path), images, path.suffix.lower().lstrip("."))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return expl
