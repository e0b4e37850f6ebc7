"""Built-in commands ``evaluate`` (retrieval metrics of id2 and baselines) and ``calibrate`` (threshold)."""

from __future__ import annotations

import dataclasses
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click
import numpy as np

from ..calibrate import save_histogram
from ..cli_support import (
    cache_option,
    config_from_flags,
    config_option_flags,
    echo_json,
    handle_errors,
    outcome_code,
    printable,
    scan_inputs,
)
from ..errors import ConfigError
from ..eval_sets import load_images, load_pairs_for_eval, prepare_eval_set
from ..evaluate import METHOD_NAMES, EmbedderMethod
from ..hookspecs import hookimpl
from ..metrics import DEFAULT_K
from ..per_query import max_distance_bits, method_bits
from ..pipeline import Pipeline, embedder_from_config


def comparison_methods(embedder: Any, cfg: Any, decision: Any = None) -> list[Any]:
    """The configured embedder's methods, plus ``sscd`` and ``fused`` whenever SSCD resolves, and baselines;
    ``fused`` scored by the ``decision`` model when one decides (and ``fused_cosine`` beside it)."""
    from ..assembly import build_embedder, sscd_available
    from ..cache import latent_cache
    from ..evaluate import default_methods

    sscd = None
    if "sscd" not in embedder.signals and embedder.name != "fused" and sscd_available(cfg.embedder) is None:
        sscd = build_embedder(dataclasses.replace(cfg.embedder, name="sscd", weights=cfg.embedder.sscd_weights))
    latent = embedder.latent_part()
    return default_methods(
        embedder, latent_cache(getattr(latent, "encoder", None), cfg.cache.dir), sscd=sscd, decision=decision
    )


def format_group_table(table: dict[str, dict[str, Any]]) -> str:
    """Rows = group labels, columns = methods, cells ``top1 / mAP``."""
    methods = list(next(iter(table.values())))
    header = ["group", "n", *methods]
    rows = [
        [
            label[:60],
            str(next(iter(ms.values())).n_positive_queries),
            *(f"{ms[m].top1:.3f} / {ms[m].mAP:.3f}" for m in methods),
        ]
        for label, ms in table.items()
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        for r in [header, *rows]
    )


def _report_skipped(skipped: list[str]) -> None:
    for line in skipped:
        click.echo(printable(line), err=True)


@click.command("evaluate")
@click.option(
    "--pairs",
    "pairs_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Pairs manifest (JSONL {query, origin}); its queries are the queries, its origins references.",
)
@click.option(
    "--distractors",
    multiple=True,
    type=click.Path(exists=True),
    help="Extra reference images (folders recurse; repeatable).",
)
@click.option(
    "--max-distractors",
    type=click.IntRange(min=0),
    default=None,
    help="Use at most N distractors (the first N, folders in sorted order).",
)
@click.option(
    "--negatives",
    "negative_dirs",
    multiple=True,
    type=click.Path(exists=True),
    help="Unrelated queries with no origin among the references (folders recurse; repeatable): they "
    "enter micro-AP and recall at precision, and the false matches at the threshold.",
)
@click.option(
    "--k",
    "eval_k",
    type=int,
    default=DEFAULT_K,
    show_default=True,
    help="Predictions kept per query for micro-AP, mAP and recall@precision.",
)
@click.option(
    "--method",
    "method_names",
    multiple=True,
    type=click.Choice(METHOD_NAMES),
    help="Evaluate only these methods (repeatable; default: all available).",
)
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON object.")
@click.option(
    "--per-query",
    "per_query_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write one record per query and method to FILE (.csv, else JSON Lines): origin, its rank "
    "and score, the best wrong reference and its score (PDQ/pHash also in Hamming bits).",
)
@cache_option
@config_option_flags
@click.pass_context
@handle_errors
def evaluate_command(
    ctx: click.Context,
    pairs_path: str,
    distractors: tuple[str, ...],
    max_distractors: int | None,
    negative_dirs: tuple[str, ...],
    eval_k: int,
    method_names: tuple[str, ...],
    as_json: bool,
    per_query_path: str | None,
    **flags: Any,
) -> None:
    """Retrieval metrics (top-1, mAP, micro-AP, recall at 90%/99.9% precision) of id2 and baselines, and the
    decisions at the configured threshold (MATCH with the right origin; false matches of --negatives).

    id2 is evaluated when a W is configured (or shipped); vae_raw, pdq and phash always. Exit 4 when
    some image could not be read or some path under --distractors or --negatives could not be walked (an
    unreadable folder, a dangling link, a symlink loop): each is reported and skipped, the rest evaluated.
    """
    from ..assembly import decision_settings
    from ..eval_sets import query_labels
    from ..evaluate import metrics_by_group, score_methods

    if eval_k < 1:
        raise ConfigError(f"--k must be >= 1, got {eval_k}")
    cfg = config_from_flags(ctx, **flags)
    # The manifest and folders first: a wrong path fails before the models load.
    distractor_files, skipped = scan_inputs(distractors)
    negative_files, problems = scan_inputs(negative_dirs)
    skipped += problems
    query_paths, ref_paths, positives = load_pairs_for_eval(pairs_path, distractor_files, max_distractors)
    embedder = embedder_from_config(cfg, in_memory_only=True)
    decision, threshold = decision_settings(cfg.match, embedder)
    methods = _chosen_methods(comparison_methods(embedder, cfg, decision), method_names)
    data = prepare_eval_set(query_paths, ref_paths, positives, embedder.normalise)
    data, problems = _with_negatives(data, negative_files, embedder.normalise)
    _report_skipped(data.skipped)
    skipped += data.skipped
    if not data.queries or not data.positives.any():
        raise ConfigError("nothing to evaluate: no readable query with a readable origin")
    n_neg = int((~data.positives.any(axis=1)).sum())
    groups = {key: query_labels(pairs_path, data.query_paths, key) for key in ("source", "family")}
    groups = {key: labels for key, labels in groups.items() if any(labels)}
    windows = {embedder.name: (cfg.match.windows, threshold)} if cfg.match.windows != "off" else None
    sims = score_methods(data.queries, data.references, methods, windows=windows)
    results, by_group = metrics_by_group(sims, data.positives, groups=groups, k=eval_k)
    decisions = _decisions(sims, data.positives, embedder.name, threshold, decision, groups)
    bits = {m.name: method_bits(m) for m in methods if method_bits(m)}
    if per_query_path:
        _write_per_query(per_query_path, sims, data, bits)
    head = dict(
        default=embedder.name,
        windows=cfg.match.windows,
        n_queries=len(data.queries) - n_neg,
        n_negatives=n_neg,
        n_references=len(data.references),
        k=eval_k,
        embedder=embedder.identity,
        decision="model" if decision is not None else "cosine",
        threshold=threshold,
        skipped=skipped,
    )
    if as_json:
        echo_json(dict(_evaluation_doc(results, by_group, bits, head, per_query_path), decisions=decisions))
    else:
        _print_evaluation(results, by_group, bits, head, int(data.positives.any(axis=0).sum()), per_query_path)
        _print_decisions(decisions)
    sys.exit(outcome_code(unreadable=skipped))


def _chosen_methods(methods: list[Any], names: tuple[str, ...]) -> list[Any]:
    if not names:
        return methods
    unknown = [n for n in names if n not in {m.name for m in methods}]
    if unknown:
        raise ConfigError(
            f"--method {', '.join(unknown)} is not available with this configuration "
            f"(available: {', '.join(m.name for m in methods)})"
        )
    return [m for m in methods if m.name in names]


def _with_negatives(data: Any, negative_files: list[Path], normalise: Any) -> tuple[Any, list[str]]:
    """``data`` with the readable negatives appended as queries without an origin (copies of a reference or
    query dropped: they are not unrelated)."""
    import numpy as np

    from ..calibrate import select_negatives

    if not negative_files:
        return data, []
    paths, _, dropped = select_negatives(negative_files, [*data.query_paths, *data.reference_paths])
    if dropped:
        click.echo(f"dropped {dropped} negative(s) identical to a reference or query", err=True)
    images, kept, errors = load_images(paths, normalise, "loading negatives")
    problems = [f"unreadable, skipped: {e}" for e in errors]
    return dataclasses.replace(
        data,
        queries=[*data.queries, *images],
        query_paths=[*data.query_paths, *(paths[i] for i in kept)],
        positives=np.vstack([data.positives, np.zeros((len(images), data.positives.shape[1]), bool)]),
        skipped=[*data.skipped, *problems],
    ), problems


def _decisions(
    sims: dict[str, Any], positives: Any, default: str, threshold: float, decision: Any, groups: dict[str, Any]
) -> dict[str, Any]:
    """The default method's decisions at the configured threshold (overall and per group), and the fused
    cosine's at its calibrated cosine threshold when a decision model decides."""
    import numpy as np

    from ..decision_metrics import decision_metrics

    out: dict[str, Any] = {}
    if default in sims:
        out[default] = decision_metrics(sims[default], positives, threshold).to_dict()
        for key, labels in groups.items():
            lab = np.array([x or "" for x in labels], dtype=object)
            out[f"{default} per {key}"] = {
                label: decision_metrics(sims[default][lab == label], positives[lab == label], threshold).to_dict()
                for label in sorted({x for x in lab if x})
            }
    op = decision.operating_point if decision is not None else None
    if op is not None and "fused_cosine" in sims:
        out["fused_cosine"] = decision_metrics(sims["fused_cosine"], positives, op.cosine_threshold).to_dict()
    return out


def _print_decisions(decisions: dict[str, Any]) -> None:
    from ..decision_metrics import DecisionMetrics, format_decisions

    def metrics(d: dict[str, Any]) -> DecisionMetrics:
        return DecisionMetrics(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    click.echo("\ndecisions (what a deployment reports):")
    for name, d in decisions.items():
        if " per " not in name:
            click.echo("  " + format_decisions(name, metrics(d)))
    for name, table in decisions.items():
        if " per " in name and len(table) > 1:
            click.echo(f"  {name} (MATCH with the right origin):")
            for label, d in table.items():
                click.echo(f"    {label[:60]:60s} {d['matched']:4d}/{d['n_edits']:<4d} = {d['recall']:.3f}")


def _write_per_query(path: str, sims: dict[str, Any], data: Any, bits: dict[str, int]) -> None:
    from ..per_query import query_records, write_records

    per_method = [
        query_records(name, s, data.positives, data.query_paths, data.reference_paths, bits.get(name))
        for name, s in sims.items()
    ]
    write_records(path, [rows[i] for i in range(len(data.query_paths)) for rows in per_method])  # grouped by query


def _bits_of(m: Any, n_bits: int) -> dict[str, Any]:
    """A hash method's thresholds as the largest matching Hamming distance (the unit HMA configures)."""
    from ..per_query import max_distance_bits

    return {
        "n_bits": n_bits,
        **{
            f"{key}_bits": None if m_thr is None else max_distance_bits(m_thr, n_bits)
            for key, m_thr in (("threshold_at_p90", m.threshold_at_p90), ("threshold_at_p999", m.threshold_at_p999))
        },
    }


def _evaluation_doc(
    results: dict[str, Any],
    by_group: dict[str, Any],
    bits: dict[str, int],
    head: dict[str, Any],
    per_query_path: str | None,
) -> dict[str, Any]:
    methods = {
        name: dict(m.to_dict(), **(_bits_of(m, bits[name]) if name in bits else {})) for name, m in results.items()
    }
    doc: dict[str, Any] = {"methods": methods, **head, "per_query": per_query_path}
    for key, table in by_group.items():
        doc[f"per_{key}"] = {label: {name: m.to_dict() for name, m in ms.items()} for label, ms in table.items()}
    return doc


def _print_evaluation(
    results: dict[str, Any],
    by_group: dict[str, Any],
    bits: dict[str, int],
    head: dict[str, Any],
    n_origins: int,
    per_query_path: str | None,
) -> None:
    from ..metrics import format_table

    click.echo(
        f"{head['n_queries']} queries, {head['n_references']} references ({n_origins} origins), "
        f"k={head['k']}, default method {head['default']} ({head['embedder']}), query windows {head['windows']}"
    )
    click.echo(format_table(results))
    for name, n_bits in bits.items():
        b = _bits_of(results[name], n_bits)
        shown = [
            f"{label} distance <= {b[key]}"
            for label, key in (("thr@P90", "threshold_at_p90_bits"), ("thr@P99.9", "threshold_at_p999_bits"))
            if b[key] is not None
        ]
        if shown:
            click.echo(f"{name} thresholds in Hamming bits of {n_bits} (HMA units): {'; '.join(shown)}")
    for key, table in by_group.items():
        if len(table) > 1:
            click.echo(f"\nper {key} (top1 / mAP):")
            click.echo(format_group_table(table))
    if per_query_path:
        click.echo(f"per-query records in {per_query_path}")


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
    from ..calibrate import calibrate_threshold, check_enough_negatives, select_negatives

    if target_fpr is None and target_precision is None:
        target_fpr = 1e-3
    if target_fpr is not None and target_precision is not None:
        raise ConfigError("give --target-fpr or --target-precision, not both")
    use_store = flags.get("store_path") is not None
    if use_store and distractors:
        raise ConfigError("--distractors and --store are alternatives: the store already is the reference set")
    if use_store and method_name != "embedder":
        raise ConfigError(f"--method {method_name} scores against the pairs' origins and --distractors, not a store")
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
    neg_paths, neg_hashes, dropped = select_negatives(negative_files, [*query_paths, *ref_paths])
    if pipeline is not None:
        in_store = pipeline.store.contains(neg_hashes)
        dropped += sum(in_store)
        neg_paths = [p for p, inside in zip(neg_paths, in_store) if not inside]
    if dropped:
        click.echo(f"dropped {dropped} negative(s) identical to a reference or query", err=True)
    check_enough_negatives(len(neg_paths), target_fpr, confidence)
    neg_imgs, neg_kept, neg_err = load_images(neg_paths, embedder.normalise, "loading negatives")
    unreadable = [*data.skipped, *(f"unreadable, skipped: {e}" for e in neg_err)]
    _report_skipped(unreadable)
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
        save_histogram(
            pos,
            neg,
            cal.threshold,
            plot_path,
            title=f"{method.name}: threshold {cal.threshold:.4f} ({cal.target} target {cal.target_value:g})",
        )
    bits = {} if n_bits is None else {"n_bits": n_bits, "threshold_bits": max_distance_bits(cal.threshold, n_bits)}
    if as_json:
        echo_json(
            dict(
                cal.to_dict(),
                **bits,
                out=str(out),
                plot=plot_path,
                per_query=per_query_path,
                embedder=identity,
                skipped=skipped,
            )
        )
    else:
        _print_calibration(cal, method.name, identity, ref_desc, out, plot_path, bits)
    sys.exit(outcome_code(unreadable=skipped))


def _calibration_method(name: str, embedder: Any, cfg: Any) -> tuple[Any, str]:
    """The method a calibration scores with, and the identity its threshold holds for."""
    from ..cache import latent_cache
    from ..evaluate import PDQMethod, PHashMethod

    if name == "pdq":
        return PDQMethod(), f"pdq (on {cfg.embedder.input_size} px normalised images)"
    if name == "phash":
        return PHashMethod(), f"phash (on {cfg.embedder.input_size} px normalised images)"
    from ..assembly import decision_settings

    decision, _ = decision_settings(cfg.match, embedder)
    if decision is not None:  # the score identify decides on: the decision model's, recalibrated here
        from ..evaluate import DecisionMethod

        parts = [EmbedderMethod(p, None, p.name) for p in embedder.parts]
        return DecisionMethod(embedder, parts, decision), embedder.identity
    # A VAE embedder's latents go through the cache when asked; a fused or SSCD embedder embeds directly.
    return EmbedderMethod(embedder, latent_cache(getattr(embedder, "encoder", None), cfg.cache.dir)), embedder.identity


def _scores(method: Any, data: Any, neg_imgs: Any, pipeline: Any, store_path: str) -> tuple[Any, list[Any], str]:
    """The calibration's scores, each negative's best reference, and a description of the references:
    the pairs' references or (with a pipeline) its store."""
    from ..calibrate import score_calibration_set, store_best_matches
    from ..evaluate import embed_images

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
    from ..per_query import negative_records, query_records, write_records

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
    from ..calibrate import calibration_config, write_calibration_config

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
    cli.add_command(evaluate_command)
    cli.add_command(calibrate_command)
