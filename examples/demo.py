"""Demo: index the real photos in ../shared/data/photos, then identify edited copies and real diffusion edits.

Run through ``bash scripts/demo.sh`` (installs first) or directly: ``python examples/demo.py [--limit N]``.
Everything goes through the ``id2-plugin`` command line, exactly as a user would run it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from _common import SHARED
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter


def cli(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "id2_plugin.cli", *args]
    print("$ id2-plugin " + " ".join(args), flush=True)
    return subprocess.run(cmd, text=True, stdout=subprocess.PIPE)


def make_edits(photos: list[Path], out: Path) -> dict[str, str]:
    """Degraded / edited copies of a few photos: name -> origin path."""
    out.mkdir(parents=True, exist_ok=True)
    truth = {}
    for i, p in enumerate(photos):
        img = Image.open(p).convert("RGB")
        w, h = img.size
        edits = {
            "jpeg30": lambda im: im,
            "blur3": lambda im: im.filter(ImageFilter.GaussianBlur(3)),
            "small": lambda im: im.resize((max(1, w // 3), max(1, h // 3))),
            "crop_colour": lambda im: ImageEnhance.Color(im.crop((w // 10, h // 10, w - w // 10, h - h // 10))).enhance(
                1.8
            ),
            "watermark": lambda im: _watermark(im),
        }
        name, fn = list(edits.items())[i % len(edits)]
        q = out / f"{p.stem}__{name}.jpg"
        fn(img).save(q, "JPEG", quality=30 if name == "jpeg30" else 85)
        truth[q.name] = str(p.resolve())
    return truth


def _watermark(im: Image.Image) -> Image.Image:
    im = im.copy()
    d = ImageDraw.Draw(im, "RGBA")
    for y in range(0, im.height, 40):
        d.text((10, y), "SAMPLE  SAMPLE  SAMPLE", fill=(255, 255, 255, 150))
    return im


def _folder_of(photos: list[Path], photos_dir: Path) -> Path:
    """A folder holding exactly ``photos``: the shared folder itself, or links to a subset of it."""
    if len(photos) == len(list(photos_dir.glob("*.jpg"))):
        return photos_dir
    folder = Path("demo-out/photos")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for p in photos:
        (folder / p.name).symlink_to(p.resolve())
    return folder


def _print_answers(stdout: str, truth: dict[str, str]) -> dict[str, int]:
    """One line per ``query --json`` answer with its verdict (what a moderator acts on: the MATCH decision),
    and the counts: edits, ranked first, MATCH with the right origin, wrong origin, unrelated, false MATCH."""
    counts = {"edits": 0, "ranked": 0, "matched": 0, "wrong": 0, "unrelated": 0, "false": 0}
    for line in stdout.splitlines():
        report = json.loads(line)
        name = Path(report["query"]).name
        best = report.get("best") or {}
        decided = report.get("decision") == "match"
        if name not in truth:
            counts["unrelated"] += 1
            counts["false"] += decided
            verdict = "FALSE MATCH" if decided else "ok (no match)"
        else:
            first = best.get("uri") == truth[name]
            counts["edits"] += 1
            counts["ranked"] += first
            counts["matched"] += decided and first
            counts["wrong"] += decided and not first
            verdict = "MATCH" if decided and first else ("WRONG ORIGIN" if decided else "missed (no match)")
        evidence = " ".join(f"{k}={v:.2f}" for k, v in (best.get("signals") or {}).items())
        print(
            f"  {verdict:17s} {name[:44]:44s} -> {Path(best.get('uri', '?')).name[:36]:36s} "
            f"score={best.get('score', float('nan')):.3f} {evidence}"
        )
    return counts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--store", default="demo-store", help="Reference store folder (created).")
    ap.add_argument("--limit", type=int, default=0, help="Index only the first N photos (0 = all 793).")
    ap.add_argument("--queries", type=int, default=10, help="How many photos get an edited copy.")
    ap.add_argument(
        "--unrelated",
        type=int,
        default=12,
        help="How many unrelated photos (people, streets, rooms) are queried too: none of them may match.",
    )
    args = ap.parse_args()
    photos_dir = SHARED / "data" / "photos"
    edits_dir = SHARED / "data" / "real-edits-dev"
    if not photos_dir.is_dir():
        print(f"error: {photos_dir} not found (set ID2_SHARED_DIR)", file=sys.stderr)
        return 2
    photos = sorted(photos_dir.glob("*.jpg"))
    if args.limit:
        photos = photos[: args.limit]
    to_index = _folder_of(photos, photos_dir)
    show = cli("config", "show")
    print(next((line for line in show.stdout.splitlines() if line.startswith("# active embedder")), ""))
    print(
        f"1) index {len(photos)} real photos and the 15 originals of the real-edit set "
        "(cached re-runs skip known files)"
    )
    res = cli("--set", f"store.path={args.store}", "index", "add", str(to_index), str(edits_dir / "originals"))
    print(res.stdout)

    print("2) edited copies (JPEG q30, blur sigma 3, 1/3 size, crop + colour, watermark) of some photos")
    rng = np.random.default_rng(0)
    picked = [photos[i] for i in sorted(rng.choice(len(photos), size=min(args.queries, len(photos)), replace=False))]
    truth = make_edits(picked, Path("demo-out/queries"))
    for line in (edits_dir / "pairs.jsonl").read_text().splitlines():
        pair = json.loads(line)
        truth[Path(pair["query"]).name] = str((edits_dir / pair["origin"]).resolve())

    unrelated = sorted((SHARED / "data" / "unrelated").glob("*.jpg"))[::40][: args.unrelated]
    print(
        f"3) identify them, the 27 real diffusion edits (FLUX.1 Kontext, MGIE, SD img2img) and {len(unrelated)} "
        "unrelated photos that must not match"
    )
    res = cli(
        "--set",
        f"store.path={args.store}",
        "query",
        "--k",
        "3",
        "--json",
        "demo-out/queries",
        str(edits_dir / "edited"),
        *map(str, unrelated),
    )
    counts = _print_answers(res.stdout, truth)
    print(
        f"\nreported MATCH with the right origin: {counts['matched']}/{counts['edits']} "
        f"(origin ranked first: {counts['ranked']}/{counts['edits']}; wrong origin: {counts['wrong']}); "
        f"unrelated photos reported as a MATCH: {counts['false']}/{counts['unrelated']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
