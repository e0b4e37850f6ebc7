"""The query loop of a robustness run: attack every query at one level, embed, score, keep the failures.

Attacks run on the image at its native size (a JPEG re-encode or a downscale happens to the file that is
shared), then the result goes through the same normaliser as a real query. Every attacked image is a
deterministic function of (seed, attack label, query name), so a rerun produces identical pixels.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from id2_plugin.evaluate import embed_images
from id2_plugin.media import MediaLimits, load_image, to_rgb_array
from id2_plugin.metrics import Metrics, compute_metrics, recall_at_threshold, wilson_interval

from .attacks import Attack, Identity, SuiteEntry
from .methods import Variant
from .results import METRIC_FIELDS, CurvePoint, FailureExample, Series


def attack_seed(seed: int, attack: Attack, query_name: str) -> np.random.SeedSequence:
    """The seed of one attacked image: independent of query order and of which other attacks run."""
    return np.random.SeedSequence([int(seed), zlib.crc32(attack.label.encode()), zlib.crc32(query_name.encode())])


@dataclass
class LevelRun:
    """Everything fixed across attack levels; :meth:`all_levels` attacks, embeds and scores each level."""

    variants: list[Variant]
    ref_emb: dict[str, np.ndarray]
    positives: np.ndarray
    q_names: list[str]
    ref_names: list[str]
    size: tuple[int, int]
    seed: int
    limits: MediaLimits
    n_failures: int
    progress: bool
    #: the operating threshold and the method it belongs to (the configured embedder's)
    threshold: float | None = None
    threshold_method: str | None = None

    def all_levels(
        self, queries: list[np.ndarray], suite: Sequence[SuiteEntry]
    ) -> tuple[list[CurvePoint], list[FailureExample]]:
        from tqdm import tqdm

        levels: list[tuple[str, int, Attack]] = [("clean", 0, Identity())]
        for entry in suite:
            levels.extend((entry.family, i + 1, a) for i, a in enumerate(entry.levels))
        strongest = {entry.family: entry.levels[-1].label for entry in suite if entry.levels}
        strongest["clean"] = "clean"
        points: list[CurvePoint] = []
        failures: list[FailureExample] = []
        with tqdm(total=len(levels), desc="attack levels", unit="level", disable=not self.progress) as bar:
            for family, level, attack in levels:
                bar.set_postfix_str(attack.label)
                self.one_level(queries, family, level, attack, attack.label == strongest.get(family), points, failures)
                bar.update(1)
        return points, failures

    def one_level(
        self,
        queries: list[np.ndarray],
        family: str,
        level: int,
        attack: Attack,
        keep_thumbs: bool,
        points: list[CurvePoint],
        failures: list[FailureExample],
    ) -> None:
        """Attack every query once, then score every series on the attacked images."""
        attacked = [attack(img, attack_seed(self.seed, attack, name)) for img, name in zip(queries, self.q_names)]
        has_pos = self.positives.any(axis=1)
        for pol, members in self.variants:
            q_arr = np.stack([to_rgb_array(a, self.size, policy=pol, limits=self.limits) for a in attacked])  # type: ignore[arg-type]
            for series, method in members:
                q_emb = embed_images(
                    method, q_arr, progress=f"{series.name}: {attack.label}" if self.progress else False
                )
                scores = np.asarray(method.similarity(q_emb, self.ref_emb[series.name]), dtype=np.float64)
                thr = self.threshold if series.primary and series.method == self.threshold_method else None
                points.append(
                    _metrics_point(
                        series,
                        attack,
                        family,
                        level,
                        compute_metrics(scores, self.positives),
                        scores,
                        self.positives,
                        thr,
                    )
                )
                failures.extend(
                    _failures(
                        series,
                        family,
                        attack,
                        scores,
                        self.positives,
                        has_pos,
                        self.q_names,
                        self.ref_names,
                        attacked if keep_thumbs else None,
                        self.limits if keep_thumbs else None,
                        self.n_failures,
                    )
                )


def _failures(
    series: Series,
    family: str,
    attack: Attack,
    scores: np.ndarray,
    positives: np.ndarray,
    has_pos: np.ndarray,
    q_names: list[str],
    ref_names: list[str],
    attacked: list[np.ndarray] | None,
    thumb_limits: MediaLimits | None,
    n: int,
) -> list[FailureExample]:
    """The ``n`` most confident top-1 errors (wrong score minus true score, largest first).

    With ``attacked`` given, thumbnails of the attacked query and both references are attached.
    """
    if n <= 0:
        return []
    best_pos = np.where(positives, scores, -np.inf).max(axis=1)
    neg = np.where(positives, -np.inf, scores)
    wrong = neg.argmax(axis=1)
    best_neg = neg[np.arange(len(scores)), wrong]
    true_idx = np.where(positives, scores, -np.inf).argmax(axis=1)
    # Same pessimistic rule as top1: a tie with a negative is a failure.
    failed = np.flatnonzero(has_pos & (best_neg >= best_pos))
    failed = failed[np.argsort(-(best_neg[failed] - best_pos[failed]), kind="stable")][:n]
    out = []
    for qi in failed:
        ex = FailureExample(
            series=series.name,
            attack=family,
            label=attack.label,
            query=q_names[qi],
            wrong_reference=ref_names[wrong[qi]],
            true_reference=ref_names[true_idx[qi]],
            wrong_score=float(best_neg[qi]),
            true_score=float(best_pos[qi]),
        )
        if attacked is not None:
            # Thumbnails show what a person would see: the attacked file and the references as stored.
            ex.query_thumb = _thumb(attacked[qi])
            ex.wrong_thumb = _thumb(np.asarray(load_image(ref_names[wrong[qi]], limits=thumb_limits)))
            ex.true_thumb = _thumb(np.asarray(load_image(ref_names[true_idx[qi]], limits=thumb_limits)))
        out.append(ex)
    return out


def _metrics_point(
    series: Series,
    attack: Attack,
    family: str,
    level: int,
    m: Metrics,
    scores: np.ndarray,
    positives: np.ndarray,
    threshold: float | None,
) -> CurvePoint:
    d = m.to_dict()
    low, high = wilson_interval(round(m.top1 * m.n_positive_queries), m.n_positive_queries)
    at: dict[str, Any] = {}
    if threshold is not None:
        k, n = recall_at_threshold(scores, positives, threshold)
        r_low, r_high = wilson_interval(k, n)
        at = dict(
            threshold=threshold,
            recall_at_threshold=k / n if n else 0.0,
            recall_at_threshold_low=r_low,
            recall_at_threshold_high=r_high,
        )
    return CurvePoint(
        series=series.name,
        method=series.method,
        resize_policy=series.resize_policy,
        attack=family,
        label=attack.label,
        intensity=attack.intensity,
        level=level,
        **{k: d[k] for k in METRIC_FIELDS},
        top1_low=low,
        top1_high=high,
        **at,
    )


def _thumb(arr: np.ndarray, max_side: int = 128) -> bytes:
    img = Image.fromarray(arr)
    img.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()
