"""Run attacks x methods: attack every query at every level, identify it among the references, score it.

The metrics and the methods are :mod:`id2_plugin.evaluate`'s (``compute_metrics``, ``EmbedderMethod``,
``PDQMethod``, ``PHashMethod``): this module only produces the attacked query sets, embeds every reference
once per method, and records one curve point per (method, resize policy, attack level) plus the most
confident failures.

Attacks run on the image at its native size (a JPEG re-encode or a downscale happens to the file that is
shared), then the result goes through the same normaliser as a real query; a downscaled query is therefore
upsized by the normaliser. Every attacked image is a deterministic function of (seed, attack label, query
name), so a rerun produces identical pixels and, with an opt-in cache root, every latent comes from
:class:`~id2_plugin.cache.LatentCache`.
"""

from __future__ import annotations

import copy
import hashlib
import io
import os
import platform
import shlex
import sys
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from id2_plugin.errors import ConfigError, MediaError
from id2_plugin.media import MediaLimits, iter_image_files, load_image, sha256_file, sha256_file_or_none, to_rgb_array
from id2_plugin.metrics import RetrievalScores

from .attacks import Attack, Identity, SuiteEntry

if TYPE_CHECKING:
    from id2_plugin.decision import DecisionModel
    from id2_plugin.embedders.base import Embedder
    from id2_plugin.evaluate import Method
    from id2_plugin.metrics import Metrics


RESIZE_POLICIES = ("squash", "center_crop", "pad")
#: Metric fields copied from :class:`id2_plugin.metrics.Metrics` into every curve point.
METRIC_FIELDS = tuple(f.name for f in fields(RetrievalScores))


# --------------------------------------------------------------------------------------------------
# data sets
# --------------------------------------------------------------------------------------------------
@dataclass
class RobustnessSet:
    """Queries (files to attack), references (origins first, then distractors) and the ground truth."""

    query_paths: list[Path]
    reference_paths: list[Path]
    #: ``Q x R`` bool: ``positives[q, r]`` where reference ``r`` is an origin of query ``q``
    positives: np.ndarray
    #: ``photos`` (the unedited photo is the query: pure copy detection) or ``pairs`` (edited queries)
    kind: str
    #: sha256 over the manifest (pairs) and every input file's content, in order
    manifest_digest: str
    #: number of references that are distractors (no query points to them)
    n_distractors: int = 0
    skipped: list[str] = field(default_factory=list)


def _inputs_digest(paths: Sequence[Path], extra: bytes = b"") -> str:
    h = hashlib.sha256(extra)
    for p in paths:
        h.update(p.name.encode() + b"\0" + sha256_file(p).encode() + b"\n")
    return h.hexdigest()


def _distractor_paths(distractors: Sequence[str | os.PathLike], exclude: set[str], limit: int | None) -> list[Path]:
    """Distractor files, skipping any whose bytes equal a query/origin or an earlier distractor."""
    out: list[Path] = []
    seen = set(exclude)
    for p in iter_image_files(list(distractors)):
        if limit is not None and len(out) >= limit:
            break
        digest = sha256_file_or_none(p)
        if digest is None or digest in seen:
            continue
        seen.add(digest)
        out.append(p)
    return out


def photos_set(
    photos: Sequence[str | os.PathLike],
    distractors: Sequence[str | os.PathLike] = (),
    *,
    limit: int | None = None,
    max_distractors: int | None = None,
) -> RobustnessSet:
    """Image-copy case: each of the first ``limit`` photos is both a reference and (attacked) a query.

    Distractors can be the same folder: the query photos (same bytes) are skipped there.
    """
    files = iter_image_files(list(photos))
    if limit is not None:
        files = files[:limit]
    if not files:
        raise ConfigError(f"no image files found in {', '.join(map(str, photos))}")
    # Byte-identical photos would be each other's "wrong" match: keep the first of each.
    unique: dict[str, Path] = {}
    for p in files:
        unique.setdefault(sha256_file(p), p)
    files = list(unique.values())
    dis = _distractor_paths(distractors, set(unique), max_distractors)
    refs = [*files, *dis]
    pos = np.zeros((len(files), len(refs)), dtype=bool)
    pos[np.arange(len(files)), np.arange(len(files))] = True
    return RobustnessSet(files, refs, pos, "photos", _inputs_digest(refs), n_distractors=len(dis))


def pairs_set(
    manifest: str | os.PathLike,
    distractors: Sequence[str | os.PathLike] = (),
    *,
    limit: int | None = None,
    max_distractors: int | None = None,
) -> RobustnessSet:
    """Edited queries from a pairs manifest (``{"query", "origin"}`` lines); the edits are what is attacked."""
    from id2_plugin.eval_sets import load_pairs_for_eval

    queries, origins, pos = load_pairs_for_eval(manifest, ())
    if limit is not None:
        queries, pos = queries[:limit], pos[:limit]
        used = pos.any(axis=0)
        origins, pos = [o for o, u in zip(origins, used) if u], pos[:, used]
    known = {sha256_file(p) for p in [*queries, *origins]}
    dis = _distractor_paths(distractors, known, max_distractors)
    refs = [*origins, *dis]
    full = np.zeros((len(queries), len(refs)), dtype=bool)
    full[:, : len(origins)] = pos
    digest = _inputs_digest([*queries, *refs], extra=Path(manifest).read_bytes())
    return RobustnessSet(list(queries), refs, full, "pairs", digest, n_distractors=len(dis))


# --------------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CurvePoint(RetrievalScores):
    """Metrics of one method (at one resize policy) on the queries attacked at one level.

    The metric fields (``top1`` ... ``n_references``) are inherited from
    :class:`id2_plugin.metrics.RetrievalScores`.
    """

    series: str
    method: str
    resize_policy: str
    attack: str
    label: str
    intensity: float
    #: 0 = clean, then 1..n from mildest to strongest within the family
    level: int
    #: 95% Wilson interval of top1
    top1_low: float = 0.0
    top1_high: float = 1.0
    #: the operating threshold (match.threshold) for the configured embedder's series, else None; the share
    #: of queries reported as a correct MATCH at it, and its 95% Wilson interval
    threshold: float | None = None
    recall_at_threshold: float | None = None
    recall_at_threshold_low: float | None = None
    recall_at_threshold_high: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        # Inheritance puts the metrics first; the JSON reports keep the point's coordinates first.
        coords = {k: v for k, v in d.items() if k not in METRIC_FIELDS}
        return {**coords, **{k: d[k] for k in METRIC_FIELDS}}


@dataclass
class FailureExample:
    """A query whose best-ranked reference is not its origin (the most confident such errors are kept)."""

    series: str
    attack: str
    label: str
    query: str
    wrong_reference: str
    true_reference: str
    wrong_score: float
    true_score: float
    query_thumb: bytes | None = None
    wrong_thumb: bytes | None = None
    true_thumb: bytes | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if not k.endswith("_thumb")}


@dataclass
class Series:
    """One curve family member: a method seen through one resize policy."""

    name: str
    method: str
    resize_policy: str
    primary: bool


@dataclass
class RobustnessResult:
    """Everything a report needs: curve points, failures, the suite, the series and provenance."""

    points: list[CurvePoint]
    failures: list[FailureExample]
    suite: list[dict[str, Any]]
    series: list[Series]
    provenance: dict[str, Any]
    dataset: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def point(self, series: str, label: str) -> CurvePoint | None:
        return next((p for p in self.points if p.series == series and p.label == label), None)

    def family_points(self, series: str, family: str) -> list[CurvePoint]:
        """The clean point then the family's levels, mildest first."""
        pts = [p for p in self.points if p.series == series and (p.attack == family or p.attack == "clean")]
        return sorted(pts, key=lambda p: p.level)

    def findings(self) -> dict[str, Any]:
        """Resize-policy comparison of each latent method: means over all attacked levels per policy.

        ``mean_<metric>[policy]`` and ``per_family_mean_<metric>[family][policy]`` for top-1, micro-AP and
        recall at 99.9% precision (ranking and global-threshold behaviour can disagree, so all are kept).
        """
        out: dict[str, Any] = {}
        attacked = [p for p in self.points if p.attack != "clean"]
        policies = sorted({p.resize_policy for p in attacked})
        if len(policies) < 2:
            return out
        families = list(dict.fromkeys(p.attack for p in attacked))
        for method in dict.fromkeys(p.method for p in attacked):
            mine = [p for p in attacked if p.method == method]
            pols = [pol for pol in policies if any(p.resize_policy == pol for p in mine)]
            if len(pols) < 2:
                continue
            entry: dict[str, Any] = {}
            for metric in ("top1", "micro_ap", "recall_at_p999"):
                entry[f"mean_{metric}"] = {
                    pol: float(np.mean([getattr(p, metric) for p in mine if p.resize_policy == pol])) for pol in pols
                }
                entry[f"per_family_mean_{metric}"] = {
                    fam: {
                        pol: float(
                            np.mean([getattr(p, metric) for p in mine if p.resize_policy == pol and p.attack == fam])
                        )
                        for pol in pols
                    }
                    for fam in families
                }
            out[method] = entry
        return out


def _thumb(arr: np.ndarray, max_side: int = 128) -> bytes:
    from PIL import Image

    img = Image.fromarray(arr)
    img.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def attack_seed(seed: int, attack: Attack, query_name: str) -> np.random.SeedSequence:
    """The seed of one attacked image: independent of query order and of which other attacks run."""
    return np.random.SeedSequence([int(seed), zlib.crc32(attack.label.encode()), zlib.crc32(query_name.encode())])


def _encoder_for_policy(embedder: Embedder, policy: str) -> Embedder:
    """The same model with another resize policy (a shallow copy shares the loaded weights)."""
    from id2_plugin.embedders.base import Embedder as _Embedder

    if embedder.encoder.resize_policy == policy:
        return embedder
    enc = copy.copy(embedder.encoder)
    enc.resize_policy = policy  # type: ignore[assignment]
    return _Embedder(enc, embedder.projection)


# --------------------------------------------------------------------------------------------------
# provenance
# --------------------------------------------------------------------------------------------------
def _git_commit() -> str | None:
    """The commit of the checkout the package runs from (None when installed from a wheel or git is absent)."""
    import subprocess

    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def provenance(
    *, embedder: Embedder | None, seed: int, dataset: RobustnessSet, command: Sequence[str] | None = None
) -> dict[str, Any]:
    """Who/what/where produced a report: versions, model identities, inputs digest, seed, command, machine."""
    import id2_plugin

    torch_version = None
    if "torch" in sys.modules or embedder is not None:
        try:
            import torch

            torch_version = torch.__version__
        except ImportError:
            pass
    w_sha = w_path = None
    latent = embedder.latent_part() if embedder is not None else None
    w = latent.projection if latent is not None else None
    if w is not None and w.source:
        w_path = w.source
        w_sha = sha256_file(w_path)
    return {
        "package": "id2-plugin",
        "version": id2_plugin.__version__,
        "embedder": latent.encoder.identity if latent is not None else None,
        "embedder_identity": embedder.identity if embedder is not None else None,
        "default_method": embedder.name if embedder is not None else None,
        "encoder_weights_sha256": getattr(latent.encoder, "weights_digest", None) if latent is not None else None,
        "projection": latent.projection_id if latent is not None else None,
        "projection_path": w_path,
        "projection_sha256": w_sha,
        # Content digest of W (weights + pool), defined even for an in-memory W that has no file.
        "projection_digest": w.digest if w is not None else None,
        "manifest_digest": dataset.manifest_digest,
        "seed": int(seed),
        "command": shlex.join(command if command is not None else sys.argv),
        "git_commit": _git_commit(),
        "queries": [{"path": str(q), "sha256": sha256_file_or_none(q)} for q in dataset.query_paths],
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "torch": torch_version,
            "numpy": np.__version__,
        },
    }


# --------------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------------
def build_methods(
    embedder: Embedder | None,
    names: Sequence[str] | None = None,
    *,
    cache_root: str | os.PathLike | None = None,
    use_cache: bool = False,
    decision: DecisionModel | None = None,
) -> list[Method]:
    """:func:`id2_plugin.evaluate.default_methods` (latents through the cache; ``fused`` scored by the
    ``decision`` model when one is given), filtered by ``names``.

    ``id2`` needs ``embedder`` to carry a W; asking for it explicitly without one is a :class:`ConfigError`.
    """
    from id2_plugin.evaluate import PDQMethod, PHashMethod, default_methods

    if embedder is None:
        methods: list[Method] = [PDQMethod(), PHashMethod()]
    else:
        from id2_plugin.cache import latent_cache

        latent = embedder.latent_part()
        cache = latent_cache(getattr(latent, "encoder", None), cache_root if use_cache else None)
        methods = default_methods(embedder, cache, decision=decision)
    if names is None:
        return methods
    available = {m.name: m for m in methods}
    missing = [n for n in names if n not in available]
    if "id2" in missing and embedder is not None and getattr(embedder.latent_part(), "projection", None) is None:
        raise ConfigError("method id2 needs a projection W: none is shipped for this embedder; pass --projection PATH")
    if missing:
        raise ConfigError(f"unknown or unavailable method(s) {', '.join(missing)}; available: {', '.join(available)}")
    return [available[n] for n in names]


def _policy_methods(
    methods: Sequence[Method], embedder: Embedder, policy: str, cache_root: Any, use_cache: bool
) -> list[Method]:
    """Copies of the latent methods (``id2``/``vae_raw``) whose encoder uses ``policy``."""
    from id2_plugin.evaluate import EmbedderMethod

    latent = embedder.latent_part()
    if latent is None:
        return []
    emb = _encoder_for_policy(latent, policy)
    from id2_plugin.cache import latent_cache

    cache = latent_cache(emb.encoder, cache_root if use_cache else None)
    out: list[Method] = []
    for m in methods:
        if isinstance(m, EmbedderMethod) and m.name in ("id2", "vae_raw"):
            from id2_plugin.embedders.base import Embedder as _Embedder

            out.append(EmbedderMethod(_Embedder(emb.encoder, m.embedder.projection), cache, name=m.name))
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
    from id2_plugin.metrics import recall_at_threshold, wilson_interval

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


def run_robustness(
    dataset: RobustnessSet,
    methods: Sequence[Method],
    suite: Sequence[SuiteEntry],
    *,
    seed: int = 0,
    embedder: Embedder | None = None,
    input_size: int | None = None,
    resize_policy: str = "squash",
    compare_policies: Sequence[str] = (),
    cache_root: str | os.PathLike | None = None,
    use_cache: bool = False,
    n_failures: int = 3,
    limits: MediaLimits | None = None,
    progress: bool = True,
    command: Sequence[str] | None = None,
    threshold: float | None = None,
) -> RobustnessResult:
    """Evaluate ``methods`` on the clean queries and on every attack level of ``suite``.

    ``compare_policies``: extra resize policies (besides ``resize_policy``) under which the latent methods
    of ``embedder`` are evaluated too, giving series such as ``vae_raw [center_crop]``.
    Failures: for every series and level, the ``n_failures`` queries whose wrong top match scored highest
    above their origin; thumbnails are kept for the strongest level of each family.
    ``threshold`` (match.threshold): the configured embedder's series also report the share of queries
    a deployment at that threshold would report as a correct MATCH; every top-1 has a 95% interval.
    """
    from id2_plugin.evaluate import embed_images

    if input_size is None:
        input_size = embedder.input_size if embedder is not None else 256
    if embedder is not None:
        resize_policy = embedder.resize_policy
    for pol in (resize_policy, *compare_policies):
        if pol not in RESIZE_POLICIES:
            raise ConfigError(f"resize policy {pol!r}: expected one of {', '.join(RESIZE_POLICIES)}")
    names = [m.name for m in methods]
    if len(set(names)) != len(names) or not names:
        raise ConfigError(f"method names must be unique and non-empty, got {names}")
    limits = limits or MediaLimits()
    size = (input_size, input_size)
    notes: list[str] = []
    variants = _variants(methods, resize_policy, compare_policies, embedder, cache_root, use_cache, notes)
    queries, q_keep = _load_queries(dataset.query_paths, limits, notes)
    ref_arrays, r_keep = _load_references(dataset.reference_paths, [pol for pol, _ in variants], size, limits, notes)
    positives = dataset.positives[np.ix_(q_keep, r_keep)]
    if not positives.any(axis=1).any():
        raise ConfigError("no query has a readable origin among the references")
    ref_emb = {
        series.name: embed_images(method, ref_arrays[pol], progress=f"{series.name}: references" if progress else False)
        for pol, members in variants
        for series, method in members
    }
    run = _LevelRun(
        variants,
        ref_emb,
        positives,
        [dataset.query_paths[i].name for i in q_keep],
        [str(dataset.reference_paths[j]) for j in r_keep],
        size,
        seed,
        limits,
        n_failures,
        progress,
        threshold,
        embedder.name if embedder is not None else None,
    )
    points, failures = run.all_levels(queries, suite)
    ds = {
        "kind": dataset.kind,
        "n_queries": len(q_keep),
        "n_references": len(r_keep),
        "n_distractors": dataset.n_distractors,
        "input_size": input_size,
        "resize_policy": resize_policy,
        "compared_policies": [pol for pol, _ in variants],
        "methods": names,
    }
    return RobustnessResult(
        points=points,
        failures=failures,
        suite=_suite_description(suite),
        series=[s for _, members in variants for s, _ in members],
        provenance=provenance(embedder=embedder, seed=seed, dataset=dataset, command=command),
        dataset=ds,
        notes=notes + dataset.skipped,
    )


if TYPE_CHECKING:
    Variant = tuple[str, list[tuple[Series, Method]]]


def _variants(
    methods: Sequence[Method],
    resize_policy: str,
    compare_policies: Sequence[str],
    embedder: Embedder | None,
    cache_root: Any,
    use_cache: bool,
    notes: list[str],
) -> list[Variant]:
    """(policy, [(series, method)]) to evaluate; the primary policy carries every method."""
    variants: list[Variant] = [(resize_policy, [(Series(m.name, m.name, resize_policy, True), m) for m in methods])]
    for pol in dict.fromkeys(compare_policies):
        if pol == resize_policy:
            continue
        if embedder is None:
            raise ConfigError("comparing resize policies needs an embedder method (id2 or vae_raw)")
        pms = _policy_methods(methods, embedder, pol, cache_root, use_cache)
        if not pms:
            notes.append("resize-policy comparison skipped: no latent method (id2/vae_raw) selected")
            continue
        variants.append((pol, [(Series(f"{m.name} [{pol}]", m.name, pol, False), m) for m in pms]))
    return variants


def _load_queries(paths: Sequence[Path], limits: MediaLimits, notes: list[str]) -> tuple[list[np.ndarray], list[int]]:
    """Queries at native size (what gets attacked) and their indices; unreadable files dropped with a note."""
    queries, keep = [], []
    for i, p in enumerate(paths):
        try:
            queries.append(np.asarray(load_image(p, limits=limits)))
            keep.append(i)
        except MediaError as exc:
            notes.append(f"query skipped: {exc}")
    return queries, keep


def _load_references(
    paths: Sequence[Path], policies: Sequence[str], size: tuple[int, int], limits: MediaLimits, notes: list[str]
) -> tuple[dict[str, np.ndarray], list[int]]:
    """References normalised once per policy, and the indices readable under the primary (first) policy."""
    arrays: dict[str, np.ndarray] = {}
    keep: list[int] | None = None
    for pol in policies:
        arrs, kept = [], []
        for j, p in enumerate(paths):
            try:
                arrs.append(to_rgb_array(p, size, policy=pol, limits=limits))  # type: ignore[arg-type]
                kept.append(j)
            except MediaError as exc:
                if pol == policies[0]:
                    notes.append(f"reference skipped: {exc}")
        keep = kept if keep is None else keep
        arrays[pol] = np.stack(arrs) if arrs else np.zeros((0, *size, 3), np.uint8)
    return arrays, keep or []


def _suite_description(suite: Sequence[SuiteEntry]) -> list[dict[str, Any]]:
    clean = {"family": "clean", "levels": [{"label": "clean", "intensity": 0.0, "repr": "Identity()"}]}
    return [clean] + [
        {
            "family": e.family,
            "levels": [{"label": a.label, "intensity": a.intensity, "repr": repr(a)} for a in e.levels],
        }
        for e in suite
    ]


@dataclass
class _LevelRun:
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
        from id2_plugin.evaluate import embed_images
        from id2_plugin.metrics import compute_metrics

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
