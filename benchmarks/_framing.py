"""Shared by the framing benchmarks (``framing.py``, ``unletterbox.py``): where the photos are, and how a
result table is printed and saved with the command that made it."""

from __future__ import annotations

import os
from pathlib import Path

SHARED = Path(os.environ.get("ID2_SHARED_DIR", Path(__file__).resolve().parent.parent.parent / "shared"))
PHOTOS = SHARED / "data" / "photos"


def publish(lines: list[str], save: Path | None, command: str) -> int:
    """Print the table; with ``save``, also write it there under the command that reproduces it."""
    text = "\n".join(lines)
    print(text)
    if save:
        save.write_text(f"`{command}`\n\n{text}\n")
    return 0
