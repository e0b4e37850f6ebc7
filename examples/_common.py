"""What the examples share: where the real photos live. The degraded copy they all identify is
:func:`id2_plugin.testing.reupload_jpeg` (the adapter tests use the same one).

The examples run as scripts from this folder, so Python puts it on ``sys.path`` and they import this
module by name (``from _common import ...``); it is not part of the installed package.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

SHARED = Path(os.environ.get("ID2_SHARED_DIR", Path(__file__).resolve().parent.parent.parent / "shared"))


def shared_photos(n: int) -> list[Path]:
    """The first ``n`` of ../shared/data/photos, sorted by name so every run uses the same ones; exits with
    one ``error:`` line naming ``ID2_SHARED_DIR`` when there are fewer."""
    folder = SHARED / "data" / "photos"
    photos = sorted(folder.glob("*.jpg"))[:n]
    if len(photos) < n:
        print(
            f"error: this example needs {n} JPEG photos in {folder} and found {len(photos)}; set ID2_SHARED_DIR "
            "to the folder holding data/photos/*.jpg (the project's ../shared by default)",
            file=sys.stderr,
        )
        raise SystemExit(2)
    return photos
