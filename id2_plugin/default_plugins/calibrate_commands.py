"""The built-in ``calibrate`` command: choose match.threshold for a target false-match rate or precision."""

from __future__ import annotations

import dataclasses
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click
import numpy as np

from ..assembly import decision_settings
from ..cache import latent_cache
from ..calibrate import calibrate_threshold, check_enough_negatives
from ..calibration_files import calibration_config, save_histogram, select_negatives, write_calibration_config
from ..calibration_scores import score_calibration_set, store_best_matches
from ..cli_support import (
    cache_option,
    config_from_flags,
    config_option_flags,
    echo_json,
    handle_errors,
    outcome_code,
    report_problems,
    scan_inputs,
)
from ..errors import ConfigError
from ..eval_sets import load_images, load_pairs_for_eval, prepare_eval_set
from ..evaluate import DecisionMethod, EmbedderMethod, PDQMethod, PHashMethod, embed_images
from ..hookspecs import hookimpl
from ..per_query import max_distance_bits, method_bits, negative_records, query_records, write_records
from ..pipeline import Pipeline, embedder_from_config


@click.command("calibrate")
@click.option(
    "--pairs",
    "pairs_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Positives: pairs manifest (JSONL {query, origin}); each query is scored against its origin.",
)
@click.option(
    "--negatives",
    "negative_dirs",
    required=True,
    multiple=True,
    type=click.Path(exists=True),
    help="Images with NO origin among the references (folders recurse; repeatable).",
)
@click.option(
    "--distractors",
    multiple=True,
    type=click.Path(exists=True),
    help="Extra references besides the pairs' origins (folders recurse; repeatable).",
)
@click.option(
    "--target-fpr", type=float, default=None, help="Target false-match rate (default 1e-3 when no target is given)."
)
@click.option("--target-precision", type=float, default=None, help="Target precision instead of a false-match rate.")
@click.option(
    "--confidence",
    type=float,
    default=0.95,
    show_default=True,
    help="Confidence of the one-sided Clopper-Pearson bound.",
)
@click.option(
    "--out",
    "out_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="YAML config to write (match.threshold + calibration provenance).",
)
@click.option(
    "--plot", "plot_path", default=None, type=click.Path(dir_okay=False), help="Save a score histogram (PNG)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the calibration as one JSON object.")
@click.option(
    "--method",
    "method_name",
    type=click.Choice(["embedder", "pdq", "phash"]),
    default="embedder",
    show_default=True,
    help="Calibrate the configured embedder, or a PDQ / pHash threshold for another "
    "system (HMA): reported as a Hamming distance too, match.threshold left unset.",
)
@click.option(
    "--per-query",
    "per_query_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write one record per query and negative to FILE (.csv, else JSON Lines): origin, rank, "
    "score, the best wrong reference and its score.",
)
@cache_option
@config_option_flags
@click.pass_context
@handle_errors
def calibrate_command(
    ctx: click.Context,
    pairs_path: str,
    negative_dirs: tuple[str, ...],
    distractors: tuple[str, ...],
    target_fpr: float | None,
    target_precision: float | None,
    confidence: float,
    out_path: str,
    plot_path: str | None,
    as_json: bool,
    method_name: str,
    per_query_path: str | None,
    **flags: Any,
) -> None:
    """Choose match.threshold for a target false-match rate or precision, with a confidence bound.

    Negatives are scored against the reference set = the pairs' origins + --distractors, or, when
    --store is given, against that existing store (use the production store to calibrate for it).
    Negatives identical (same bytes) to a reference are dropped. Writes a config that
    `id2-plugin --config OUT query ...` loads. Exit 4 (after writing it) when some image could not be
    read or some path under --negatives / --distractors could not be walked; each is reported.
    """
    use_store = flags.get("store_path") is not None
    target_fpr = _checked_target(target_fpr, target_precision, use_store, distractors, method_name)
    cfg = config_from_flags(ctx, **flags)
    negative_files, skipped = scan_inputs(negative_dirs)
    distractor_files, problems = scan_inputs(() if use_store else distractors)
    skipped += problems
    query_paths, ref_paths, positives = load_pairs_for_eval(pairs_path, distractor_files)
    pipeline = Pipeline.from_config(cfg) if use_store else None
    embedder = pipeline.embedder if pipeline is not None else embedder_from_config(cfg, in_memory_only=True)
    method, identity = _calibration_method(method_name, embedder, cfg)
    data = prepare_eval_set(query_paths, ref_paths, positives, embedder.normalise)
    if not data.positives.any():
        raise ConfigError("no readable query with a readable origin: no positive score")
    neg_paths = _negative_paths(negative_files, [*query_paths, *ref_paths], pipeline)
    check_enough_negatives(len(neg_paths), target_fpr, confidence)
    neg_imgs, neg_kept, neg_err = load_images(neg_paths, embedder.normalise, "loading negatives")
    unreadable = [*data.skipped, *(f"unreadable, skipped: {e}" for e in neg_err)]
    report_problems(unreadable)
    skipped += unreadable
    if not neg_imgs:
        raise ConfigError("no readable negative image")
    scored, neg_best, ref_desc = _scores(method, data, neg_imgs, pipeline, cfg.store.path)
    pos, neg = scored.positive_scores, scored.negative_best
    cal = calibrate_threshold(pos, neg, target_fpr=target_fpr, target_precision=target_precision, confidence=confidence)
    n_bits = method_bits(method)
    out = _write_calibration(
        cfg,
        cal,
        identity,
        use_store,
        pairs_path,
        negative_dirs,
        ref_desc,
        out_path,
        None if method_name == "embedder" else method_name,
        n_bits,
    )
    if per_query_path:
        _write_calibration_records(
            per_query_path, method.name, n_bits, data, scored, [neg_paths[i] for i in neg_kept], neg_best
        )
    if plot_path:
        title = f"{method.name}: threshold {cal.threshold:.4f} ({cal.target} target {cal.target_value:g})"
        save_histogram(pos, neg, cal.threshold, plot_path, title=title)
    bits = {} if n_bits is None else {"n_bits": n_bits, "threshold_bits": max_distance_bits(cal.threshold, n_bits)}
    if as_json:
        echo_json(_calibration_doc(cal, bits, out, plot_path, per_query_path, identity, skipped))
    else:
        _print_calibration(cal, method.name, identity, ref_desc, out, plot_path, bits)
    sys.exit(outcome_code(unreadable=skipped))


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


def _negative_paths(negative_files: list[Path], known: list[Path], pipeline: Any) -> list[Path]:
    """The negatives that are not a copy of a query or reference, nor (with a pipeline) already in its store."""
    paths, hashes, dropped = select_negatives(negative_files, known)
    if pipeline is not None:
        in_store = pipeline.store.contains(hashes)
        dropped += sum(in_store)
        paths = [p for p, inside in zip(paths, in_store) if not inside]
    if dropped:
        click.echo(f"dropped {dropped} negative(s) identical to a reference or query", err=True)
    return paths


def _calibration_method(name: str, embedder: Any, cfg: Any) -> tuple[Any, str]:
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


def _scores(method: Any, data: Any, neg_imgs: Any, pipeline: Any, store_path: str) -> tuple[Any, list[Any], str]:
    """The calibration's scores, each negative's best reference, and a description of the references:
    the pairs' references or (with a pipeline) its store."""
    if pipeline is None:
        got = score_calibration_set(method, data.queries, data.references, data.positives, neg_imgs, progress=True)
        best = [str(data.reference_paths[i]) for i in got.negative_best_index]
        return got, best, f"{len(data.references)} references (pair origins + distractors)"
    with pipeline:
        got = score_calibration_set(method, data.queries, data.references, data.positives, None)
        if pipeline.decision is not None:  # negatives decided as identify decides them, windows included
            reports = [r for r in pipeline.identify_many(neg_imgs) if not isinstance(r, Exception)]
            neg = np.array([r.best.score if r.best else -1.0 for r in reports])
            uris = [r.best.uri if r.best else None for r in reports]
        else:
            neg, uris = store_best_matches(pipeline.store, embed_images(method, neg_imgs, progress="negatives"))
        got = dataclasses.replace(got, negative_best=neg)
        return got, uris, f"store {store_path} ({pipeline.store.info().count} references)"


def _write_calibration_records(
    path: str, name: str, n_bits: int | None, data: Any, scored: Any, neg_paths: list[Any], neg_best: list[Any]
) -> None:
    records = query_records(name, scored.query_scores, scored.positives, data.query_paths, data.reference_paths, n_bits)
    write_records(path, records + negative_records(name, neg_paths, neg_best, scored.negative_best, n_bits))


def _write_calibration(
    cfg: Any,
    cal: Any,
    identity: str,
    use_store: bool,
    pairs_path: str,
    negative_dirs: tuple[str, ...],
    ref_desc: str,
    out_path: str,
    hash_method: str | None,
    n_bits: int | None,
) -> Path:
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    data = (
        f"pairs={Path(pairs_path).resolve()}; negatives={', '.join(str(Path(d).resolve()) for d in negative_dirs)}; "
        f"references={ref_desc}"
    )
    doc = calibration_config(
        cal,
        embedder=dataclasses.asdict(cfg.embedder),
        store=dataclasses.asdict(cfg.store) if use_store else None,
        k=cfg.match.k,
        embedder_identity=identity,
        data=data,
        date=now,
        hash_method=hash_method,
        n_bits=n_bits,
    )
    return write_calibration_config(out_path, doc)


def _calibration_doc(
    cal: Any,
    bits: dict[str, int],
    out: Path,
    plot_path: str | None,
    per_query_path: str | None,
    identity: str,
    skipped: list[str],
) -> dict[str, Any]:
    """The ``--json`` document: the calibration, its Hamming form for a hash, the files written, what was skipped."""
    return dict(
        cal.to_dict(),
        **bits,
        out=str(out),
        plot=plot_path,
        per_query=per_query_path,
        embedder=identity,
        skipped=skipped,
    )


def _print_calibration(
    cal: Any, method: str, identity: str, ref_desc: str, out: Path, plot_path: str | None, bits: dict[str, int]
) -> None:
    goal = f"false-match rate <= {cal.target_value:g}" if cal.target == "fpr" else f"precision >= {cal.target_value:g}"
    pct = f"{cal.confidence:.0%}"
    click.echo(f"threshold {cal.threshold:.6f} for {goal} at {pct} confidence ({method}, {identity})")
    if bits:
        click.echo(
            f"  as a Hamming distance (HMA units): match when distance <= {bits['threshold_bits']} "
            f"of {bits['n_bits']} bits"
        )
    click.echo(
        f"  negatives {cal.n_neg}: {cal.false_matches} false match(es), rate {cal.fpr:.4g}, "
        f"{pct} upper bound {cal.fpr_upper_bound:.4g}"
    )
    click.echo(
        f"  positives {cal.n_pos}: recall {cal.recall:.4f}; precision {cal.precision:.4f} "
        f"(conservative {cal.precision_lower_bound:.4f})"
    )
    click.echo(f"  references: {ref_desc}")
    use = f"; use it with: id2-plugin --config {out} query ..." if not bits else " (calibration record only)"
    click.echo(f"wrote {out}" + (f" and {plot_path}" if plot_path else "") + use)


@hookimpl
def id2_register_commands(cli: click.Group) -> None:
    cli.add_command(calibrate_command)
