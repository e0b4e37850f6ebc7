"""Built-in commands: ``index add|info|remove``, ``query``, ``embed``, ``config show``."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import click
import numpy as np

from ..cli_support import (
    EXIT_NO_MATCH,
    EXIT_OK,
    EXIT_STORE,
    config_from_flags,
    config_option_flags,
    echo_json,
    expand_inputs,
    get_state,
    handle_errors,
    match_option_flags,
    outcome_code,
    parse_rotations,
    printable,
)
from ..errors import MediaError
from ..hookspecs import hookimpl
from ..media import describe


@click.group("index")
def index_group() -> None:
    """Manage the reference store."""


@index_group.command("add")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--label", "labels", multiple=True, help="Label stored with every added reference (repeatable).")
@click.option("--index-type", default=None, help="Index type when the store is created (store.index).")
@click.option(
    "--commit-every",
    type=click.IntRange(min=1),
    default=1024,
    show_default=True,
    help="Commit after this many new references, so an interrupted run keeps its work.",
)
@config_option_flags
@click.pass_context
@handle_errors
def index_add(
    ctx: click.Context,
    paths: tuple[str, ...],
    labels: tuple[str, ...],
    index_type: str | None,
    commit_every: int,
    **flags: Any,
) -> None:
    """Embed images (folders recurse) and add them to the store; duplicates (same bytes) are skipped.
    Exit 4 if some file could not be read (reported; the rest is added)."""
    from ..pipeline import Pipeline

    cfg = config_from_flags(ctx, **flags)
    if index_type:
        cfg = dataclasses.replace(cfg, store=dataclasses.replace(cfg.store, index=index_type))
    files, problems = expand_inputs(paths)  # each problem reported; the rest is still indexed
    with Pipeline.from_config(cfg, create_store=True) as pipeline:
        # Commits every commit_every references, so an interrupted run keeps what it embedded.
        res = pipeline.add_files(files, labels=labels, commit_every=commit_every, progress=True)
    for what, why in res.failures:
        click.echo(printable(f"skipped {what}: {why}"), err=True)
    failed = len(res.failures) + len(problems)
    click.echo(
        f"added {len(res.added)}, duplicates skipped {len(res.duplicates)}, failed {failed}; "
        f"store now holds {res.store_count} references"
    )
    sys.exit(outcome_code(unreadable=failed))


@index_group.command("info")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@config_option_flags
@click.pass_context
@handle_errors
def index_info(ctx: click.Context, as_json: bool, **flags: Any) -> None:
    """Show the store's size, dimension, index type and embedder identity."""
    from ..assembly import open_store

    cfg = config_from_flags(ctx, **flags)
    from ..stores.base import embedder_kind

    with open_store(cfg.store, embedder_identity=None, dim=None, create=False) as store:
        info = store.info()
    doc = dict(
        info.to_dict(),
        method=embedder_kind(info.embedder),
        status=info.extra.get("status", "ok"),
        decision=_decision_summary(cfg, info),
    )
    if as_json:
        echo_json(doc)
    else:
        for k, v in doc.items():
            # nested details (index options, tuning) as JSON, not a Python repr
            click.echo(f"{k}: {json.dumps(v, default=str) if isinstance(v, (dict, list)) else v}")
    if doc["status"].startswith("damaged"):
        click.echo("error: the store is damaged; run `id2-plugin index verify --repair`", err=True)
        sys.exit(EXIT_STORE)


def _decision_summary(cfg: Any, info: Any) -> dict[str, Any] | str:
    """How this store's queries are decided: the calibrated operating point and its false-match bound at the
    store's size (false matches grow with the store), or why the cosine decides uncalibrated."""
    from ..assembly import model_for_identity

    model = model_for_identity(cfg.match.decision, info.embedder) if info.embedder else None
    op = model.operating_point if model is not None else None
    if op is None:
        return "cosine, uncalibrated for this store's embedder (run `id2-plugin calibrate --store`)"
    return {
        "model": model.source,
        "decides": "cosine" if cfg.match.decision == "cosine" else "model",
        "threshold": op.threshold,
        "cosine_threshold": op.cosine_threshold,
        "target_false_match_rate": op.target_fpr,
        "pair_rate_bound": op.pair_fpr_upper_bound,
        "false_match_rate_bound_at_this_size": round(op.per_query_fpr(info.count), 6),
        "calibrated_at_references": op.n_references,
    }


@index_group.command("remove")
@click.argument("keys", nargs=-1, required=True)
@config_option_flags
@click.pass_context
@handle_errors
def index_remove(ctx: click.Context, keys: tuple[str, ...], **flags: Any) -> None:
    """Remove references by reference id, sha256, or the path of the original file. Exit 1 if some key
    matched no reference."""
    from ..assembly import open_store
    from ..pipeline import remove_references

    cfg = config_from_flags(ctx, **flags)
    # Removing needs no model: the store is opened for any embedder.
    with open_store(cfg.store, embedder_identity=None, dim=None, create=False) as store:
        n = remove_references(store, keys)
    click.echo(f"removed {n} of {len(keys)}")
    sys.exit(EXIT_OK if n == len(keys) else EXIT_NO_MATCH)


@click.command("query")
@click.argument("files", nargs=-1, required=True, type=click.Path())
@match_option_flags
@click.option("--json", "as_json", is_flag=True, help="One JSON report per line.")
@click.option(
    "--rotations",
    callback=parse_rotations,
    default=None,
    help="Also search the query turned by these degrees, e.g. 0,90,180,270 (match.rotations; k variants = k embeddings).",
)
@click.option(
    "--mirror/--no-mirror", default=None, help="Also search each rotation mirrored (match.mirror; doubles the cost)."
)
@click.option(
    "--windows",
    type=click.Choice(["auto", "always", "off"]),
    default=None,
    help="Search the query's 9 half-size windows too: below the threshold (auto), always, or never (match.windows).",
)
@config_option_flags
@click.pass_context
@handle_errors
def query(ctx: click.Context, files: tuple[str, ...], as_json: bool, **flags: Any) -> None:
    """Identify the origin of each FILE (folders recurse). Exit 1 if some file has no match, 4 if some
    file could not be read (reported; the rest is still queried)."""
    from ..pipeline import Pipeline

    cfg = config_from_flags(ctx, **flags)
    paths, problems = expand_inputs(files)
    with Pipeline.from_config(cfg) as pipeline:
        unmatched, unreadable = _query_paths(pipeline, paths, as_json)
    sys.exit(outcome_code(unreadable=unreadable + len(problems), no_match=unmatched))


def _query_paths(pipeline: Any, paths: list[Path], as_json: bool) -> tuple[int, int]:
    """Print each report as its batch finishes; the number of files with no match and of unusable files."""
    from tqdm import tqdm

    counts = {"match": 0, "no_match": 0, "error": 0}
    with tqdm(total=len(paths), desc="querying", unit="img", disable=len(paths) < 2 or as_json) as bar:
        for path, report in zip(paths, pipeline.identify_iter(paths)):
            counts[_print_report(path, report, as_json)] += 1
            bar.update(1)
    return counts["no_match"], counts["error"]


def _print_report(path: Path, report: Any, as_json: bool) -> str:
    """Print one report; its outcome: ``match``, ``no_match`` or ``error``."""
    if isinstance(report, MediaError):
        if as_json:
            echo_json({"query": str(path), "error": str(report)})
        else:
            click.echo(printable(f"{path}: ERROR {report}"), err=True)
        return "error"
    outcome = "match" if report.is_match else "no_match"
    if as_json:
        echo_json(report.to_dict())
        return outcome
    rate = (
        ""
        if report.false_match_rate is None
        else f", false matches <= {report.false_match_rate:.2%} of unrelated queries"
    )
    click.echo(
        printable(f"{path}: {report.decision.upper()} ({report.score_kind} threshold {report.threshold:.3f}{rate})")
    )
    for m in report.matches:
        cosine = "" if m.cosine is None else f" cosine={m.cosine:.4f}"
        evidence = "".join(f" {name}={score:.3f}" for name, score in m.signals)
        turned = "".join(f" ({v})" for v in (m.orientation, m.window and f"window {m.window}") if v)
        click.echo(printable(f"  #{m.rank} score={m.score:.4f}{cosine}{evidence}{turned} id={m.reference_id} {m.uri}"))
    return outcome


@click.command("embed")
@click.argument("files", nargs=-1, required=True, type=click.Path())
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output .npz (embeddings, paths).")
@config_option_flags
@click.pass_context
@handle_errors
def embed(ctx: click.Context, files: tuple[str, ...], out: str, **flags: Any) -> None:
    """Embed FILEs (folders recurse) into an .npz with arrays ``embeddings`` and ``paths``. Exit 4 if some
    file could not be read (reported and left out)."""
    from ..pipeline import embedder_from_config

    cfg = config_from_flags(ctx, **flags)
    paths, problems = expand_inputs(files)  # before the model loads: a wrong path fails in milliseconds
    embedder = embedder_from_config(cfg)
    vecs, names, bad = [], [], len(problems)
    for item in embedder.embed_iter(paths, progress="embedding", total=len(paths)):
        if item.error is not None:
            bad += 1
            click.echo(printable(f"skipped {item.error}"), err=True)
            continue
        vecs.append(item.vector)
        names.append(describe(item.source))
    arr = np.stack(vecs) if vecs else np.zeros((0, embedder.dim), np.float32)
    np.savez(out, embeddings=arr, paths=np.array(names), embedder=np.array(embedder.identity))
    click.echo(f"wrote {len(vecs)} embeddings of dim {embedder.dim} to {out}" + (f"; {bad} failed" if bad else ""))
    sys.exit(outcome_code(unreadable=bad))


@click.group("config")
def config_group() -> None:
    """Inspect configuration."""


@config_group.command("show")
@click.pass_context
@handle_errors
def config_show(ctx: click.Context) -> None:
    """Print the effective configuration (file + --set overrides) as YAML."""
    from ..assembly import resolve_embedder_name, sscd_available

    cfg = get_state(ctx).config()
    click.echo(f"# source: {cfg.source or 'defaults'}")
    active = resolve_embedder_name(cfg.embedder)
    why = (
        ""
        if cfg.embedder.name != "auto"
        else (
            " (SSCD resolved)"
            if active == "fused"
            else f" (SSCD unavailable: {(sscd_available(cfg.embedder) or '').splitlines()[0]})"
        )
    )
    click.echo(f"# active embedder: {active}{why}")
    click.echo(cfg.to_yaml(mask_secrets=True), nl=False)


@click.command("quantize")
@click.argument("photos", nargs=-1, type=click.Path(exists=True))
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Models folder to write taef2/taef2_encoder_{int8,fp32}.onnx into (default: the first $ID2_MODELS_DIR entry).",
)
@click.option(
    "--images", "count", type=int, default=100, show_default=True, help="Calibration photos used (spread over PHOTOS)."
)
@click.option(
    "--precision",
    type=click.Choice(["int8", "fp32"]),
    default="int8",
    show_default=True,
    help="int8: quantise, calibrated on PHOTOS; fp32: export the weights as they are (no PHOTOS), "
    "for embedder.runtime=onnxruntime.",
)
@click.pass_context
@handle_errors
def quantize(ctx: click.Context, photos: tuple[str, ...], out_dir: str | None, count: int, precision: str) -> None:
    """Make the int8 TAEF2 encoder (embedder.precision=int8) here, calibrated on PHOTOS (files or folders),
    or with --precision fp32 the fp32 one for ONNX Runtime (embedder.runtime=onnxruntime).

    Use photos like the ones you will index; they are read into memory only. Takes a few minutes on a CPU.
    The written models hold weights only.
    """
    import os

    from ..embedders.taef2_int8 import export_taef2_fp32, quantize_taef2
    from ..errors import ConfigError

    cfg = get_state(ctx).config()
    out_dir = out_dir or next((p for p in os.environ.get("ID2_MODELS_DIR", "").split(os.pathsep) if p), None)
    if out_dir is None:
        raise ConfigError(f"quantize needs --out DIR (or $ID2_MODELS_DIR) for the {precision} model")
    if precision == "fp32":
        path = export_taef2_fp32(out_dir, weights=cfg.embedder.weights, input_size=cfg.embedder.input_size)
        click.echo(
            f"wrote {path}; with ID2_MODELS_DIR={out_dir}, embedder.runtime auto (the default) runs it on the CPU"
        )
        return
    if not photos:
        raise click.UsageError("--precision int8 needs calibration PHOTOS (files or folders)")
    files, problems = expand_inputs(photos)  # each problem reported; calibration uses the readable rest
    path = quantize_taef2(out_dir, files, weights=cfg.embedder.weights, count=count, input_size=cfg.embedder.input_size)
    click.echo(
        f"wrote {path} (calibrated on {min(count, len(files))} photos); use it with ID2_MODELS_DIR={out_dir} "
        f"and embedder.precision=int8 (or auto)"
    )
    sys.exit(outcome_code(unreadable=bool(problems)))


@hookimpl
def id2_register_commands(cli: click.Group) -> None:
    for cmd in (index_group, query, embed, config_group, quantize):
        cli.add_command(cmd)
