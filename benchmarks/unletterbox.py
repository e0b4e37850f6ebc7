"""How the border cut behaves on the shared photos, without any model: what it cuts from real photos, and
whether it removes bars and canvases added around them.

    python benchmarks/unletterbox.py [--every 8] [--save FILE.md]

1. Every shared photo through ``unletterbox``: how many lose anything, and how many more than 10% of
   their area (most of those have a frame or a flat backdrop of their own).
2. Every ``--every``-th photo that loses nothing, framed four ways (black letterbox bars of 60 px, black
   pillarbox bars of 70 px, centred on a white canvas twice its size, a 30 px blue frame) and saved as
   JPEG q75: recovered when the cut leaves the photo within 4 px per side, and over-cut when the cut
   goes more than 4 px into it.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _framing import PHOTOS, publish  # noqa: E402

FRAMINGS = {
    "black letterbox 60 px": ((0, 0, 0), lambda w, h: (0, 60)),
    "black pillarbox 70 px": ((0, 0, 0), lambda w, h: (70, 0)),
    "white canvas 2x": ((255, 255, 255), lambda w, h: (w // 2, h // 2)),
    "blue frame 30 px": ((40, 90, 160), lambda w, h: (30, 30)),
}


def framed(img: Image.Image, colour: tuple[int, int, int], pad: tuple[int, int]) -> Image.Image:
    canvas = Image.new("RGB", (img.width + 2 * pad[0], img.height + 2 * pad[1]), colour)
    canvas.paste(img, pad)
    buf = io.BytesIO()
    canvas.save(buf, "JPEG", quality=75)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--every", type=int, default=8)
    ap.add_argument("--save", type=Path, default=None)
    args = ap.parse_args(argv)
    from id2_plugin.media import load_image, unletterbox

    paths = sorted(PHOTOS.glob("*.jpg"))
    changed = big = 0
    clean: list[Image.Image] = []
    t0 = time.perf_counter()
    for i, p in enumerate(paths):
        img = load_image(p)
        out = unletterbox(img)
        if out.size != img.size:
            changed += 1
            big += out.width * out.height < 0.9 * img.width * img.height
        elif i % args.every == 0:
            clean.append(img)
    ms = (time.perf_counter() - t0) / len(paths) * 1e3
    lines = [
        f"photos: {len(paths)}; cut at all: {changed}; cut by more than 10% of the area: {big}; "
        f"decode + cut: {ms:.1f} ms/photo",
        "",
        "| framing (JPEG q75) | photos | recovered (within 4 px) | over-cut |",
        "|---|---|---|---|",
    ]
    for name, (colour, pad) in FRAMINGS.items():
        ok = over = 0
        for img in clean:
            out = unletterbox(framed(img, colour, pad(img.width, img.height)))
            ok += abs(out.width - img.width) <= 4 and abs(out.height - img.height) <= 4
            over += out.width < img.width - 4 or out.height < img.height - 4
        lines.append(f"| {name} | {len(clean)} | {ok} | {over} |")
    return publish(lines, args.save, f"python benchmarks/unletterbox.py --every {args.every}")


if __name__ == "__main__":
    sys.exit(main())
