"""The built-in ``evaluate`` command: retrieval metrics and decisions of id2 and its baselines on a pairs set."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import click
import numpy as np

from ..assembly import build_embedder, decision_settings, sscd_available
from ..cache import latent_cache
from ..calibration_files import select_negatives
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
from ..decision_metrics import DecisionMetrics, decision_metrics, format_decisions
from ..errors import ConfigError
from ..eval_sets import load_images, load_pairs_for_eval, prepare_eval_set, query_labels
from ..evaluate import METHOD_NAMES, default_methods, metrics_by_group, score_methods
from ..hookspecs import hookimpl
from ..metrics import DEFAULT_K, format_table
from ..per_query import max_distance_bits, method_bits, query_records, write_records
from ..pipeline import embedder_from_config


def comparison_methods(embedder: Any, cfg: Any, decision: Any = None) -> list[Any]:
    """The configured embedder's methods, plus ``sscd`` and ``fused`` whenever SSCD resolves, and baselines;
    ``fused`` scored by the ``decision`` model when one decides (and ``fused_cosine`` beside it)."""
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
    report_problems(data.skipped)
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
    per_method = [
        query_records(name, s, data.positives, data.query_paths, data.reference_paths, bits.get(name))
        for name, s in sims.items()
    ]
    write_records(path, [rows[i] for i in range(len(data.query_paths)) for rows in per_method])  # grouped by query


def _bits_of(m: Any, n_bits: int) -> dict[str, Any]:
    """A hash method's thresholds as the largest matching Hamming distance (the unit HMA configures)."""
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


@hookimpl
def id2_register_commands(cli: click.Group) -> None:
    cli.add_command(evaluate_command)
