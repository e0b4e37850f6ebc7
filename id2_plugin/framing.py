"""Framing: uniform borders (letterbox, pillarbox, solid canvases) removed before embedding, and the
query-time orientation variants (rotations, mirror) searched when a copy may have been turned, and the
query windows searched when a subject may have been re-staged small in a new scene.

A re-shared image often sits inside bars or on a canvas: a 16:9 video frame around a 4:3 photo, a square
post around a landscape picture, a product shot pasted onto white. The embedders see the whole frame, so
the bars dominate the latent and the match is lost. :func:`trim_borders` cuts each side's run of uniform
rows or columns, of any colour, with a tolerance for JPEG/video noise, and refuses to cut when the
content left would be too small (a uniform image, a thin strip) - such an image is returned whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from .types import Match

#: Rotations (degrees, counter-clockwise) a query may be searched under.
ROTATIONS = (0, 90, 180, 270)


@dataclass(frozen=True)
class BorderTrim:
    """How borders are found. ``tolerance``: largest per-channel difference (0-255) from a line's median
    colour that still counts as border (JPEG and chroma-subsampled video put noise of ~5-15 around flat
    colour); a line's median may differ from the side's outermost line's by half of it;
    ``uniform_fraction``: share of a line's pixels that must be within tolerance (ringing and stray
    specks); ``min_fraction``/``min_pixels``: smallest content kept per axis, as a fraction of the side
    and in pixels."""

    tolerance: int = 24
    uniform_fraction: float = 0.98
    min_fraction: float = 0.1
    min_pixels: int = 16
    #: mean difference (0-255) between the border colour and the content just inside it: a pasted border
    #: ends in a step, a natural flat background (sky, studio wall) fades into the subject and is kept
    min_step: float = 24.0
    #: ... or the border is one exact colour (median drift at most ``flat_drift``) and the line colour
    #: jumps by at least ``min_jump`` where it ends: black bars beside a dark scene have no big step, but
    #: a natural background drifts and fades instead of jumping
    flat_drift: float = 2.0
    min_jump: float = 8.0


def _uniform_lines(rgb: np.ndarray, trim: BorderTrim) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``rgb`` (H x W x 3): is it uniform, and its median colour."""
    median = np.median(rgb, axis=1)  # H x 3
    dev = np.abs(rgb.astype(np.int16) - median[:, None, :].astype(np.int16)).max(axis=2)
    uniform = (dev <= trim.tolerance).mean(axis=1) >= trim.uniform_fraction
    return uniform, median


def _run_length(uniform: np.ndarray, colour: np.ndarray, tolerance: int) -> int:
    """Length of the leading run of uniform lines whose colour matches the outermost line's."""
    if not uniform[0]:
        return 0
    same = np.abs(colour.astype(np.int16) - colour[0].astype(np.int16)).max(axis=1) <= tolerance
    bad = np.flatnonzero(~(uniform & same))
    return int(bad[0]) if bad.size else len(uniform)


#: Lines skipped past a border's end before the step is measured: JPEG ringing and chroma bleeding
#: smear the edge over a pixel or two.
_EDGE_BLUR = 2


def _border_run(rgb: np.ndarray, trim: BorderTrim) -> int:
    """Border rows at the top of ``rgb``: a run of uniform rows of one colour that ends in a step."""
    if not _uniform_lines(rgb[:1], trim)[0][0]:
        return 0  # most images: the outermost row is content, and the whole-image statistics are skipped
    uniform, colour = _uniform_lines(rgb, trim)
    n = _run_length(uniform, colour, trim.tolerance // 2)
    if n == 0 or n == len(rgb):
        return n
    inside = rgb[min(n + _EDGE_BLUR, len(rgb) - 1)].astype(np.int16)
    step = np.abs(inside - colour[0].astype(np.int16)).max(axis=1).mean()
    return n if step >= trim.min_step or _flat_then_jump(colour, n, trim) else 0


def _flat_then_jump(colour: np.ndarray, n: int, trim: BorderTrim) -> bool:
    """Is the run of ``n`` lines one exact colour, followed by a jump of the line colour?"""
    c = colour.astype(np.float32)
    drift = np.abs(c[:n] - c[0]).max()
    jump = np.abs(c[min(n + _EDGE_BLUR, len(c) - 1)] - c[n - 1]).max()
    return bool(drift <= trim.flat_drift and jump >= trim.min_jump)


def _edge_runs(rgb: np.ndarray, trim: BorderTrim) -> tuple[int, int]:
    """Border rows at the top and at the bottom of ``rgb``."""
    return _border_run(rgb, trim), _border_run(rgb[::-1], trim)


def _kept_enough(size: int, start: int, stop: int, trim: BorderTrim) -> bool:
    return stop - start >= max(trim.min_pixels, trim.min_fraction * size)


def border_box(rgb: np.ndarray, trim: BorderTrim | None = None) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` (slice bounds) of ``rgb`` without its uniform borders.

    Rows are cut first, then columns of what is left, then rows again, so bars on all four sides (a
    "windowbox") and bars of different colours per side are all removed. The whole image is the answer
    when the content left would be below the minimum size on either axis.
    """
    trim = trim or BorderTrim()
    h, w = rgb.shape[:2]
    top, bottom, left, right = 0, h, 0, w
    for _ in range(2):
        t, b = _edge_runs(rgb[top:bottom, left:right], trim)
        top, bottom = top + t, bottom - b
        if not _kept_enough(h, top, bottom, trim):
            return 0, h, 0, w
        lft, rgt = _edge_runs(rgb[top:bottom, left:right].transpose(1, 0, 2), trim)
        left, right = left + lft, right - rgt
        if not _kept_enough(w, left, right, trim):
            return 0, h, 0, w
    return top, bottom, left, right


def trim_borders(rgb: np.ndarray, trim: BorderTrim | None = None) -> np.ndarray:
    """``rgb`` (H x W x 3 uint8) without its uniform borders (a view; the input when nothing is cut)."""
    top, bottom, left, right = border_box(rgb, trim)
    return rgb[top:bottom, left:right]


def orientation_variants(rotations: Sequence[int] = (0,), mirror: bool = False) -> list[tuple[int, bool]]:
    """The ``(rotation, mirrored)`` pairs a query is searched under: each rotation, and each mirrored
    too when ``mirror``. Searching k variants costs k embeddings per query."""
    bad = [r for r in rotations if r not in ROTATIONS]
    if bad or not rotations:
        raise ValueError(f"rotations {list(rotations)}: expected a non-empty list of {', '.join(map(str, ROTATIONS))}")
    flips = (False, True) if mirror else (False,)
    return [(r, f) for r in dict.fromkeys(rotations) for f in flips]


def orient(image: np.ndarray, rotation: int, mirrored: bool) -> np.ndarray:
    """``image`` (H x W x C) undone by ``rotation`` degrees and optionally mirrored left-right.

    Rotating the normalised square is the same as rotating the decoded image before the squash resize
    (a per-axis resize commutes with a quarter turn up to the axis swap), so variants cost no decoding.
    """
    out = np.rot90(image, k=rotation // 90, axes=(0, 1))
    return np.ascontiguousarray(out[:, ::-1] if mirrored else out)


def orientation_label(rotation: int, mirrored: bool) -> str:
    """``""`` for the upright query, else e.g. ``rot90``, ``mirror`` or ``rot270+mirror``."""
    parts = ([f"rot{rotation}"] if rotation else []) + (["mirror"] if mirrored else [])
    return "+".join(parts)


def best_per_reference(candidates: Sequence[Sequence[Match]], k: int) -> list[tuple[Match, int]]:
    """Each reference's best match over several candidate lists (the first list wins ties), re-ranked, top
    ``k``, with the index of the list it came from."""
    best: dict[str, tuple[Match, int]] = {}
    for ci, matches in enumerate(candidates):
        for m in matches:
            if m.reference_id not in best or m.score > best[m.reference_id][0].score:
                best[m.reference_id] = (m, ci)
    ranked = sorted(best.values(), key=lambda mc: -mc[0].score)[:k]
    return [(replace(m, rank=i + 1), ci) for i, (m, ci) in enumerate(ranked)]


def best_over_orientations(
    per_variant: Sequence[Sequence[Match]], variants: Sequence[tuple[int, bool]], k: int
) -> list[tuple[Match, int]]:
    """Each reference's best match over the query variants, re-ranked, top ``k``, with the index of the
    variant that won (its vector gives the per-signal scores). A non-upright winner is labelled."""
    return [
        (replace(m, orientation=orientation_label(*variants[vi])), vi) for m, vi in best_per_reference(per_variant, k)
    ]


#: Query windows: a 3 x 3 grid of half-size squares at quarter steps. An edit that re-stages a subject small
#: in a new scene keeps it inside one window, where a copy detector finds the original (measured:
#: benchmarks/results/query_windows.md).
WINDOW_GRID = 3


def query_windows(image: np.ndarray, grid: int = WINDOW_GRID) -> tuple[list[str], np.ndarray]:
    """The ``grid x grid`` half-size windows of a square normalised ``image`` (labels ``r{row}c{col}``, and
    the crops stacked, each ``S/2`` square; the embedders resize them to their input size)."""
    size = image.shape[0]
    half = size // 2
    steps = [round(i * (size - half) / (grid - 1)) for i in range(grid)] if grid > 1 else [(size - half) // 2]
    labels = [f"r{r}c{c}" for r in range(len(steps)) for c in range(len(steps))]
    crops = np.stack([image[y : y + half, x : x + half] for y in steps for x in steps])
    return labels, crops


def best_over_windows(
    whole: Sequence[Match], per_window: Sequence[Sequence[Match]], labels: Sequence[str], k: int
) -> list[tuple[Match, int]]:
    """Each reference's best match over the whole query and its windows, re-ranked, top ``k``, with the
    index of the winner (-1 = the whole image, else the window). A window winner is labelled."""
    ranked = best_per_reference([whole, *per_window], k)
    return [(replace(m, window=labels[ci - 1] if ci else ""), ci - 1) for m, ci in ranked]


def needs_second_look(mode: str, best_score: float | None, threshold: float, floor: float = float("-inf")) -> bool:
    """Whether a query's windows are searched (``match.windows``), the one rule of identification and
    evaluation: ``always``; never when ``off``; ``auto`` when the whole image's best score is below
    ``threshold`` but at least ``floor`` (a decision model's window floor: below it the windows cannot
    change the decision). A query with no candidate at all (``best_score`` None) is looked at only ``always``."""
    if mode == "always":
        return True
    if mode == "off" or best_score is None:
        return False
    return floor <= best_score < threshold
