"""The ``calibrate`` use case: choose match.threshold for a target false-match rate or precision on a pairs set
and unrelated negatives, as a library function the ``calibrate`` command and a Python user run alike."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .assembly import decision_settings
from .cache import latent_cache
from .calibrate import Calibration, calibrate_threshold, check_enough_negatives
from .calibration_files import calibration_config, save_histogram, select_negatives, write_calibration_config
from .calibration_scores import score_calibration_set, store_best_matches
from .config import Config
from .errors import ConfigError
from .eval_sets import EvalSet, load_images, load_pairs_for_eval, manifest_list, prepare_eval_set, scan_folders
from .evaluate import DecisionMethod, EmbedderMethod, PDQMethod, PHashMethod, embed_images
from .per_query import max_distance_bits, method_bits, negative_records, query_records, write_records
from .pipeline import Pipeline, embedder_from_config

PathLike = str | os.PathLike


@dataclasses.dataclass(frozen=True)
class CalibrationRun:
    """What a calibration chose and wrote. ``to_dict()`` is the ``calibrate --json`` document."""

    calibration: Calibration
    #: the method scored: the embedder's name, ``pdq`` or ``phash``
    method: str
    #: the embedder identity (or hash description) the threshold holds for
    identity: str
    #: the reference set the negatives were scored against (the pairs' references, or the store)
    references: str
    #: the config document (``match.threshold`` and ``calibration`` provenance) that ``out`` holds
    config: dict[str, Any]
    #: a hash method's bits (the threshold is then also a Hamming distance); None for an embedder
    n_bits: int | None
    out: Path | None
    plot: str | None
    per_query: str | None
    #: paths skipped (unwalkable, unreadable), each as a ``skipped ...`` / ``unreadable, skipped: ...`` line
    skipped: list[str]
    #: negatives dropped as byte-identical copies of a reference or query, or already in the store
    dropped_negatives: int = 0

    @property
    def bits(self) -> dict[str, int]:
        """A hash method's threshold as the largest matching Hamming distance (HMA units); empty otherwise."""
        if self.n_bits is None:
            return {}
        return {"n_bits": self.n_bits, "threshold_bits": max_distance_bits(self.calibration.threshold, self.n_bits)}

    def to_dict(self) -> dict[str, Any]:
        """The ``calibrate --json`` document: the calibration, its Hamming form for a hash, the files written,
        what was skipped."""
        return dict(
            self.calibration.to_dict(),
            **self.bits,
            out=None if self.out is None else str(self.out),
            plot=self.plot,
            per_query=self.per_query,
            embedder=self.identity,
            skipped=self.skipped,
        )


def run_calibration(
    cfg: Config,
    pairs: PathLike | Sequence[PathLike],
    negatives: Sequence[PathLike],
    *,
    distractors: Sequence[PathLike] = (),
    against_store: bool = False,
    target_fpr: float | None = None,
    target_precision: float | None = None,
    confidence: float = 0.95,
    method: str = "embedder",
    out: PathLike | None = None,
    plot: PathLike | None = None,
    per_query: PathLike | None = None,
    report: Callable[[str], None] | None = None,
    progress: bool = False,
) -> CalibrationRun:
    """Calibrate a threshold on the pairs manifest ``pairs`` (several are pooled; positives: each query
    against its origin) and the unrelated images under ``negatives``, what ``id2-plugin calibrate`` runs.

    Negatives are scored against the pairs' origins + ``distractors``, or with ``against_store`` against the
    configured store as identify decides (the production store calibrates for it). ``target_fpr`` defaults to
    1e-3 when no target is given. ``method`` is ``embedder`` (the configured one) or ``pdq`` / ``phash`` (a
    threshold for another system, also as a Hamming distance). Writes the config to ``out``, a histogram to
    ``plot`` and one record per query and negative to ``per_query`` when given. ``report`` receives each
    problem as found. Raises :class:`~id2_plugin.errors.ConfigError` on a bad argument or too few negatives.
    """
    target_fpr = _checked_target(target_fpr, target_precision, against_store, distractors, method)
    say = report or (lambda line: None)
    negative_files, skipped = scan_folders(negatives, say)
    distractor_files, problems = scan_folders(() if against_store else distractors, say)
    skipped += problems
    query_paths, ref_paths, positives = load_pairs_for_eval(pairs, distractor_files)
    pipeline = Pipeline.from_config(cfg) if against_store else None
    embedder = pipeline.embedder if pipeline is not None else embedder_from_config(cfg, in_memory_only=True)
    scorer, identity = _calibration_method(method, embedder, cfg)
    data = prepare_eval_set(query_paths, ref_paths, positives, embedder.normalise, progress=progress)
    if not data.positives.any():
        raise ConfigError("no readable query with a readable origin: no positive score")
    neg_paths, dropped = _negative_paths(negative_files, [*query_paths, *ref_paths], pipeline)
    if dropped:
        say(f"dropped {dropped} negative(s) identical to a reference or query")
    check_enough_negatives(len(neg_paths), target_fpr, confidence)
    neg_imgs, neg_kept, neg_err = load_images(neg_paths, embedder.normalise, "loading negatives" if progress else False)
    skipped += _reported([*data.skipped, *(f"unreadable, skipped: {e}" for e in neg_err)], say)
    if not neg_imgs:
        raise ConfigError("no readable negative image")
    scored, neg_best, references = _scores(scorer, data, neg_imgs, pipeline, cfg.store.path, progress)
    pos, neg = scored.positive_scores, scored.negative_best
    cal = calibrate_threshold(pos, neg, target_fpr=target_fpr, target_precision=target_precision, confidence=confidence)
    n_bits = method_bits(scorer)
    hash_method = None if method == "embedder" else method
    doc = _calibration_doc(cfg, cal, identity, against_store, pairs, negatives, references, hash_method, n_bits)
    written = None if out is None else write_calibration_config(out, doc)
    if per_query is not None:
        _write_per_query(per_query, scorer.name, n_bits, data, scored, [neg_paths[i] for i in neg_kept], neg_best)
    if plot is not None:
        title = f"{scorer.name}: threshold {cal.threshold:.4f} ({cal.target} target {cal.target_value:g})"
        save_histogram(pos, neg, cal.threshold, str(plot), title=title)
    return CalibrationRun(
        calibration=cal,
        method=scorer.name,
        identity=identity,
        references=references,
        config=doc,
        n_bits=n_bits,
        out=written,
        plot=None if plot is None else str(plot),
        per_query=None if per_query is None else str(per_query),
        skipped=skipped,
        dropped_negatives=dropped,
    )


def _checked_target(
    target_fpr: float | None, target_precision: float | None, use_store: bool, distractors: Any, method_name: str
) -> float | None:
    """The false-match-rate target (1e-3 when no target is given), after refusing options that exclude each other."""
    if target_fpr is not None and target_precision is not None:
        raise ConfigError("give --target-fpr or --target-precision, not both")
    if use_store and distractors:
        raise ConfigError("--distractors and --store are alternatives: the store already is the reference set")
    if use_store and method_name != "embedder":
        raise ConfigError(f"--method {method_name} scores against the pairs' origins and --distractors, not a store")
    return 1e-3 if target_fpr is None and target_precision is None else target_fpr


def _reported(lines: list[str], say: Callable[[str], None]) -> list[str]:
    """``lines``, each passed to ``say`` first."""
    for line in lines:
        say(line)
    return lines


def _write_per_query(
    path: PathLike,
    name: str,
    n_bits: int | None,
    data: EvalSet,
    scored: Any,
    neg_paths: list[Path],
    neg_best: list[Any],
) -> None:
    records = query_records(name, scored.query_scores, scored.positives, data.query_paths, data.reference_paths, n_bits)
    write_records(path, records + negative_records(name, neg_paths, neg_best, scored.negative_best, n_bits))


def _negative_paths(negative_files: list[Path], known: list[Path], pipeline: Any) -> tuple[list[Path], int]:
    """The negatives that are not a copy of a query or reference, nor (with a pipeline) already in its store;
    and how many were dropped."""
    paths, hashes, dropped = select_negatives(negative_files, known)
    if pipeline is not None:
        in_store = pipeline.store.contains(hashes)
        dropped += sum(in_store)
        paths = [p for p, inside in zip(paths, in_store) if not inside]
    return paths, dropped


def _calibration_method(name: str, embedder: Any, cfg: Config) -> tuple[Any, str]:
    """The method a calibration scores with, and the identity its threshold holds for."""
    if name == "pdq":
        return PDQMethod(), f"pdq (on {cfg.embedder.input_size} px normalised images)"
    if name == "phash":
        return PHashMethod(), f"phash (on {cfg.embedder.input_size} px normalised images)"
    decision, _ = decision_settings(cfg.match, embedder)
    if decision is not None:  # the score identify decides on: the decision model's, recalibrated here
        parts = [EmbedderMethod(p, None, p.name) for p in embedder.parts]
        return DecisionMethod(embedder, parts, decision), embedder.identity
    # A VAE embedder's latents go through the cache when asked; a fused or SSCD embedder embeds directly.
    return EmbedderMethod(embedder, latent_cache(getattr(embedder, "encoder", None), cfg.cache.dir)), embedder.identity


def _scores(
    method: Any, data: EvalSet, neg_imgs: Any, pipeline: Any, store_path: str, progress: bool
) -> tuple[Any, list[Any], str]:
    """The calibration's scores, each negative's best reference, and a description of the references:
    the pairs' references or (with a pipeline) its store."""
    if pipeline is None:
        got = score_calibration_set(method, data.queries, data.references, data.positives, neg_imgs, progress=progress)
        best = [str(data.reference_paths[i]) for i in got.negative_best_index]
        return got, best, f"{len(data.references)} references (pair origins + distractors)"
    with pipeline:
        got = score_calibration_set(method, data.queries, data.references, data.positives, None)
        if pipeline.decision is not None:  # negatives decided as identify decides them, windows included
            reports = [r for r in pipeline.identify_many(neg_imgs) if not isinstance(r, Exception)]
            neg = np.array([r.best.score if r.best else -1.0 for r in reports])
            uris = [r.best.uri if r.best else None for r in reports]
        else:
            vectors = embed_images(method, neg_imgs, progress="negatives" if progress else False)
            neg, uris = store_best_matches(pipeline.store, vectors)
        got = dataclasses.replace(got, negative_best=neg)
        return got, uris, f"store {store_path} ({pipeline.store.info().count} references)"


def _calibration_doc(
    cfg: Config,
    cal: Calibration,
    identity: str,
    use_store: bool,
    pairs: PathLike | Sequence[PathLike],
    negatives: Sequence[PathLike],
    references: str,
    hash_method: str | None,
    n_bits: int | None,
) -> dict[str, Any]:
    """The config a calibration writes: ``match.threshold`` with the provenance of the data it was chosen on."""
    manifests = manifest_list(pairs)
    data = (
        f"pairs={', '.join(str(Path(p).resolve()) for p in manifests)}; "
        f"negatives={', '.join(str(Path(d).resolve()) for d in negatives)}; references={references}"
    )
    return calibration_config(
        cal,
        embedder=dataclasses.asdict(cfg.embedder),
        store=dataclasses.asdict(cfg.store) if use_store else None,
        k=cfg.match.k,
        embedder_identity=identity,
        data=data,
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        hash_method=hash_method,
        n_bits=n_bits,
    )
