"""Pool the three real-edit manifests into one (absolute paths), so that one ``evaluate`` run ranks every edit
among all origins and reports per family:

    python benchmarks/pooled_pairs.py /tmp/all_pairs.jsonl
    id2-plugin evaluate --pairs /tmp/all_pairs.jsonl --distractors ../shared/data/photos \
        --negatives ../shared/data/unrelated --cache /tmp/latent-cache --json \
        > benchmarks/results/evaluate_decisions.json

``real-edits-dev`` has no ``family`` field: its lines get one naming the set. Twins are kept (absolute too).
The manifest names files in ``../shared`` only: it is written where you say, never committed.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

SHARED = Path(os.environ.get("ID2_SHARED_DIR", Path(__file__).resolve().parent.parent.parent / "shared"))
DEV_FAMILY = "real-edits-dev (FLUX Kontext, MGIE, SD img2img)"


def main(out: str) -> int:
    with open(out, "w", encoding="utf-8") as f:
        for name in ("train", "dev", "hard"):
            base = SHARED / "data" / f"real-edits-{name}"
            for line in (base / "pairs.jsonl").read_text(encoding="utf-8").splitlines():
                d = json.loads(line)
                d["query"], d["origin"] = str(base / d["query"]), str(base / d["origin"])
                if "twins" in d:
                    d["twins"] = [str(base / t) for t in d["twins"]]
                d["family"] = d.get("family") or DEV_FAMILY
                d["set"] = f"real-edits-{name}"
                f.write(json.dumps(d) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
