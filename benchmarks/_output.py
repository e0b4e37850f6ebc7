"""Printing a benchmark's Markdown report and, when asked, saving it under ``benchmarks/results/``."""

from __future__ import annotations

from pathlib import Path


def emit(lines: list[str], out: Path | None) -> str:
    """Print the report made of ``lines`` and write it to ``out`` when given; returns the text."""
    text = "\n".join(lines)
    print(text)
    if out:
        out.write_text(text + "\n")
    return text
