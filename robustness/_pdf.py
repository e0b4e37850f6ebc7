"""PDF pages of the robustness report: a title page, tables that wrap and continue, failure examples.

Every page is a landscape letter-size matplotlib Figure (Agg, no pyplot state). Table cells are wrapped
to their column's width before drawing, and a table that does not fit continues on the next page, so no
text runs over its neighbour.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Sequence
from typing import Any

from id2_plugin.extras import require

PAGE = (11.0, 8.5)
_FONT = 7.5
#: characters of a 7.5 pt font across the usable page width (DejaVu Sans, with room for wide letters)
_CHARS_PER_PAGE = 160
_LINES_PER_PAGE = 52


def _figure() -> Any:
    return require("matplotlib.figure").Figure(figsize=PAGE, dpi=100)


def title_figure(title: str, paragraphs: Sequence[str], facts: Sequence[tuple[str, str]]) -> Any:
    """The first page: the title, wrapped paragraphs, then ``facts`` as label: value lines."""
    fig = _figure()
    fig.text(0.06, 0.90, title, fontsize=22, weight="bold", va="top")
    y = 0.82
    for para in paragraphs:
        text = textwrap.fill(para, 130)
        fig.text(0.06, y, text, fontsize=10, va="top")
        y -= 0.028 * (text.count("\n") + 1) + 0.02
    for label, value in facts:
        text = textwrap.fill(value, 105, subsequent_indent="  ", break_long_words=True)
        fig.text(0.06, y, f"{label}:", fontsize=9, weight="bold", va="top")
        fig.text(0.22, y, text, fontsize=9, va="top", family="monospace")
        y -= 0.024 * (text.count("\n") + 1) + 0.008
    return fig


def _column_chars(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[int]:
    """Characters per column: each column's longest cell, long columns shrunk to share the page width."""
    want = [max([len(h), *(len(r[i]) for r in rows)]) + 3 for i, h in enumerate(headers)]
    budget = _CHARS_PER_PAGE
    while sum(want) > budget:
        widest = max(range(len(want)), key=want.__getitem__)
        want[widest] = max(8, want[widest] - max(1, (sum(want) - budget) // 2))
        if all(w <= 8 for w in want):
            break
    return want


def _wrap(text: str, width: int) -> str:
    return "\n".join(textwrap.wrap(text, max(4, width - 2), break_long_words=True, break_on_hyphens=False)) or text


def table_figures(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[Any]:
    """One or more pages holding the table: cells wrapped to their column, rows continued across pages."""
    rows = [list(map(str, r)) for r in rows] or [["–"] * len(headers)]
    chars = _column_chars(headers, rows)
    head = [_wrap(h, c) for h, c in zip(headers, chars)]
    body = [[_wrap(cell, c) for cell, c in zip(r, chars)] for r in rows]
    head_lines = max(h.count("\n") + 1 for h in head)
    pages, page, used = [], [], head_lines
    for r in body:
        n = max(c.count("\n") + 1 for c in r)
        if page and used + n > _LINES_PER_PAGE:
            pages.append(page)
            page, used = [], head_lines
        page.append(r)
        used += n
    pages.append(page)
    total = len(pages)
    return [
        _table_page(title if total == 1 else f"{title} ({i + 1}/{total})", head, p, chars) for i, p in enumerate(pages)
    ]


def _table_page(title: str, head: list[str], rows: list[list[str]], chars: list[int]) -> Any:
    fig = _figure()
    ax = fig.add_axes((0.03, 0.03, 0.94, 0.88))
    ax.axis("off")
    fig.text(0.03, 0.95, title, fontsize=12, weight="bold", va="top")
    widths = [c / sum(chars) for c in chars]
    tbl = ax.table(cellText=rows, colLabels=head, colWidths=widths, loc="upper left", cellLoc="left")
    tbl.auto_set_font_size(False)
    tbl.set_fontsize(_FONT)
    line = 1.0 / (_LINES_PER_PAGE + 4)  # axes fraction per text line, with room for padding
    for (r, _c), cell in tbl.get_celld().items():
        lines = max(x.count("\n") + 1 for x in (head if r == 0 else rows[r - 1]))
        cell.set_height(line * (lines + 0.6))
        cell.PAD = 0.02
        if r == 0:
            cell.set_facecolor("#eeeeee")
            cell.get_text().set_weight("bold")
    return fig


def _thumb(data: bytes | None) -> Any:
    if not data:
        return None
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def failure_figures(failures: Sequence[Any], per_page: int = 4) -> list[Any]:
    """Pages of failure examples: per row the attacked query, the wrong first match and the true origin."""
    shown = [f for f in failures if f.query_thumb is not None]
    pages = []
    for start in range(0, len(shown), per_page):
        chunk = shown[start : start + per_page]
        fig = _figure()
        fig.text(
            0.03,
            0.97,
            "Failure examples (strongest level of each attack): query, wrong first match, true origin",
            fontsize=12,
            weight="bold",
            va="top",
        )
        axes = fig.subplots(
            per_page,
            3,
            squeeze=False,
            gridspec_kw={"left": 0.3, "right": 0.97, "top": 0.92, "bottom": 0.03, "hspace": 0.35},
        )
        for row, f in zip(axes, chunk):
            captions = ("query", f"wrong {f.wrong_score:.3f}", f"origin {f.true_score:.3f}")
            colours = ("black", "#b00000", "#007000")
            for ax, data, cap, col in zip(row, (f.query_thumb, f.wrong_thumb, f.true_thumb), captions, colours):
                img = _thumb(data)
                if img is not None:
                    ax.imshow(img)
                ax.set_title(cap, fontsize=8, color=col)
                ax.axis("off")
            label = textwrap.fill(f"{f.series} · {f.label} · {f.query}", 50, break_long_words=True)
            row[0].text(-0.15, 0.5, label, transform=row[0].transAxes, ha="right", va="center", fontsize=7.5)
        for row in axes[len(chunk) :]:
            for ax in row:
                ax.set_visible(False)
        pages.append(fig)
    return pages
