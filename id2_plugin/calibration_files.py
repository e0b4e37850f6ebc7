"""The files of the ``calibrate`` use case: choosing negative images, the score histogram, the YAML config."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ._files import sha256_file_or_none
from ._lazy import require
from .calibrate import Calibration
from .config import load_config
from .errors import ConfigError
from .media import iter_image_files
from .per_query import max_distance_bits

__all__ = ["calibration_config", "save_histogram", "select_negatives", "write_calibration_config"]


def save_histogram(
    pos_scores: Sequence[float] | np.ndarray,
    neg_scores: Sequence[float] | np.ndarray,
    threshold: float,
    path: str,
    title: str = "score distribution",
) -> None:
    """Save overlaid histograms of positive and negative scores with the threshold as a PNG (Agg canvas)."""
    require("matplotlib")
    # Figure + FigureCanvasAgg directly: never switches the host's global matplotlib backend.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pos = np.asarray(pos_scores, dtype=np.float64)
    neg = np.asarray(neg_scores, dtype=np.float64)
    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    lo = float(min(pos.min(), neg.min(), threshold))
    hi = float(max(pos.max(), neg.max(), threshold))
    bins = np.linspace(lo, hi if hi > lo else lo + 1e-6, 60)
    ax.hist(neg, bins=bins, alpha=0.6, label=f"negatives: best score (n={len(neg)})", color="tab:red", density=True)
    ax.hist(
        pos, bins=bins, alpha=0.6, label=f"positives: query vs origin (n={len(pos)})", color="tab:blue", density=True
    )
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.4f}")
    ax.set_xlabel("cosine similarity")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def select_negatives(
    negative_dirs: Sequence[str | os.PathLike], known: Sequence[Path]
) -> tuple[list[Path], list[str], int]:
    """Images under ``negative_dirs`` that are not one of ``known`` (same path or same bytes).

    Negatives must have no origin among the references; an exact copy of a reference or query is certainly
    mislabelled, so it is dropped rather than counted as a false match. Returns (paths, their sha256, dropped).
    """
    known_paths = {Path(p).resolve() for p in known}
    known_hashes = {h for h in (sha256_file_or_none(p) for p in known_paths) if h}
    paths: list[Path] = []
    hashes: list[str] = []
    dropped = 0
    for p in iter_image_files(list(negative_dirs)):
        digest = sha256_file_or_none(p)
        if p.resolve() in known_paths or (digest is not None and digest in known_hashes):
            dropped += 1
            continue
        paths.append(p)
        hashes.append(digest or "")
    return paths, hashes, dropped


def calibration_config(
    cal: Calibration,
    *,
    embedder: dict[str, Any],
    store: dict[str, Any] | None,
    k: int,
    embedder_identity: str,
    data: str,
    date: str,
    hash_method: str | None = None,
    n_bits: int | None = None,
) -> dict[str, Any]:
    """The config document a calibration writes: the embedder it holds for, match.threshold, provenance.

    A hash baseline (``hash_method`` with ``n_bits``) records its threshold in the calibration block only,
    also as a Hamming distance: the plugin never matches with it, so match.threshold is left alone.
    """
    doc: dict[str, Any] = {"embedder": embedder}
    if store is not None:
        doc["store"] = store
    if hash_method is None:
        doc["match"] = {"k": k, "threshold": cal.threshold}
    fields = (
        "target",
        "target_value",
        "confidence",
        "threshold",
        "fpr_upper_bound",
        "fpr",
        "recall",
        "precision",
        "n_pos",
        "n_neg",
        "false_matches",
    )
    doc["calibration"] = {
        **{f: getattr(cal, f) for f in fields},
        "embedder": embedder_identity,
        "date": date,
        "data": data,
    }
    if hash_method is not None and n_bits:
        doc["calibration"].update(method=hash_method, threshold_bits=max_distance_bits(cal.threshold, n_bits))
    return doc


def write_calibration_config(path: str | os.PathLike, doc: dict[str, Any]) -> Path:
    """Write ``doc`` as YAML atomically, after checking that it loads as a config."""
    header = (
        (
            f"# Written by `id2-plugin calibrate` on {doc['calibration']['date']}.\n"
            f"# match.threshold is valid only for the embedder in calibration.embedder; recalibrate after changing\n"
            f"# the embedder, W, input size or resize policy.\n"
        )
        if "match" in doc
        else (
            f"# Written by `id2-plugin calibrate` on {doc['calibration']['date']}: "
            f"a {doc['calibration'].get('method')}\n"
            "# threshold for another system (HMA / ThreatExchange: calibration.threshold_bits); "
            "match.threshold is unset.\n"
        )
    )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(header + yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    try:
        load_config(tmp)  # what we write must load; a failure here is a bug, not a user error
    except ConfigError:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, out)
    return out
