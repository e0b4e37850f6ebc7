"""Example: the ID2 signal type inside the real ``threatexchange`` CLI (python-threatexchange).

Steps, exactly as an operator would type them (run in a throw-away HOME so ~/.threatexchange is untouched):

    threatexchange config extensions add id2_plugin.adapters.threatexchange
    threatexchange hash -S id2 photo originals/*.jpg           # "id2 id2:2:<digest>:<payload>" per file
    threatexchange config collab edit local_file --create --filename refs.txt id2-refs
    threatexchange fetch                                        # builds the id2 FAISS index
    threatexchange match -S id2 --all photo suspect.jpg         # "id2 <distance> (id2-refs) ..."

Usage: ``python examples/threatexchange_cli.py [--photos 4]`` (reads ../shared/data/photos).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import shared_photos

from id2_plugin.testing import reupload_jpeg


def tx(home: Path, *args: str) -> str:
    print("$ threatexchange " + " ".join(a if len(a) < 60 else a[:57] + "..." for a in args), flush=True)
    proc = subprocess.run(
        [sys.executable, "-m", "threatexchange.cli.main", *args],
        cwd=home,
        text=True,
        capture_output=True,
        env=dict(os.environ, HOME=str(home)),
    )
    if proc.returncode:
        sys.exit(f"threatexchange failed:\n{proc.stderr}")
    return proc.stdout


def edited(path: Path, out: Path) -> Path:
    """Colour shift + JPEG quality 50: a degraded copy."""
    out.write_bytes(reupload_jpeg(path))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=4, help="number of reference photos")
    args = ap.parse_args()
    photos = shared_photos(args.photos + 1)
    originals, unrelated = photos[:-1], photos[-1]
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        print(tx(home, "config", "extensions", "add", "id2_plugin.adapters.threatexchange"))
        out = tx(home, "hash", "-S", "id2", "photo", *map(str, originals))
        hashes = [line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("id2 ")]
        print(
            f"  {len(hashes)} id2 hashes of {len(hashes[0])} characters each "
            f"(embedder digest {hashes[0].split(':')[2]})"
        )
        refs = home / "refs.txt"
        refs.write_text("".join(f"id2 {h}\n" for h in hashes))
        tx(home, "config", "collab", "edit", "local_file", "--create", "--filename", str(refs), "id2-refs")
        tx(home, "fetch")
        print(tx(home, "dataset", "--signal-summary"))
        queries = [edited(p, home / f"{p.stem}_edited.jpg") for p in originals] + [unrelated]
        for q in queries:
            result = tx(home, "match", "-S", "id2", "photo", str(q)).strip()
            print(f"  {q.name}: {result or 'no match'}")


if __name__ == "__main__":
    main()
