"""Built-in commands: ``index add|info|remove``, ``query``, ``embed``, ``config show``."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click
import numpy as np
import pluggy

from .._files import sha256_file_or_none
from .._cli_support import EXIT_OK, EXIT_SOFT_FAIL, config_from_flags, config_option_flags, echo_json, get_state, handle_errors
from ..errors import MediaError
from ..media import describe, iter_image_files
from ..types import ReferenceRecord

hookimpl = pluggy.HookimplMarker("id2_plugin")


@click.group("index")
def index_group() -> None:
    """Manage the reference store."""


@index_group.command("add")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--label", "labels", multiple=True, help="Label stored with every added reference (repeatable).")
@click.option("--index-type", default=None, help="Index type when the store is created (store.index).")
@click.option("--commit-every", type=int, default=1024, show_default=True,
              help="Commit after this many new references, so an interrupted run keeps its work.")
@config_option_flags
@click.pass_context
@handle_errors
def index_add(ctx: click.Context, paths: tuple[str, ...], labels: tuple[str, ...], index_type: str | None,
              commit_every: int, **flags: Any) -> None:
    """Embed images (folders recurse) and add them to the store; duplicates (same bytes) are skipped."""
    from ..identify import build_embedder, open_store
    from ..media import MediaLimits
    from ..stores._bulk import bulk_add

    cfg = config_from_flags(ctx, **flags)
    if index_type:
        cfg = dataclasses.replace(cfg, store=dataclasses.replace(cfg.store, index=index_type))
    files = iter_image_files(list(paths))
    embedder = build_embedder(cfg.embedder, MediaLimits(cfg.media.max_pixels, cfg.media.max_bytes))
    store = open_store(cfg.store, embedder_identity=embedder.identity, dim=embedder.dim, create=True)
    store.check_compatible(embedder.identity)
    hashes = {f: sha256_file_or_none(f) for f in files}
    known = dict(zip(files, store.contains([h or "" for h in hashes.values()])))
    todo = [f for f in files if not known[f] and hashes[f] is not None]
    failures = [f for f in files if hashes[f] is None]
    for f in failures:
        click.echo(f"skipped {f}: cannot read file", err=True)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")

    def batches() -> Iterator[tuple[np.ndarray, list[ReferenceRecord]]]:
        for item in embedder.embed_iter(todo, progress="indexing", total=len(todo)):
            path = todo[item.index]
            if item.error is not None:
                failures.append(path)
                click.echo(f"skipped {item.error}", err=True)
                continue
            record = ReferenceRecord(sha256=hashes[path] or "", uri=str(path.resolve()), labels=labels, added_at=now)
            yield np.asarray(item.vector, np.float32)[None, :], [record]

    # bulk_add commits every commit_every references, so an interrupted run keeps what it embedded.
    res = bulk_add(store, batches(), commit_every=commit_every)
    added, dup = res.added, res.duplicates + sum(known.values())
    info = store.info()
    click.echo(f"added {added}, duplicates skipped {dup}, failed {len(failures)}; store now holds {info.count} references")
    store.close()
    sys.exit(EXIT_SOFT_FAIL if failures else EXIT_OK)


@index_group.command("info")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@config_option_flags
@click.pass_context
@handle_errors
def index_info(ctx: click.Context, as_json: bool, **flags: Any) -> None:
    """Show the store's size, dimension, index type and embedder identity."""
    from ..identify import open_store

    cfg = config_from_flags(ctx, **flags)
    from ..stores.base import embedder_kind

    with open_store(cfg.store, embedder_identity=None, dim=None, create=False) as store:
        info = store.info()
    doc = dict(info.to_dict(), method=embedder_kind(info.embedder))
    if as_json:
        echo_json(doc)
        return
    for k, v in doc.items():
        click.echo(f"{k}: {v}")


@index_group.command("remove")
@click.argument("keys", nargs=-1, required=True)
@config_option_flags
@click.pass_context
@handle_errors
def index_remove(ctx: click.Context, keys: tuple[str, ...], **flags: Any) -> None:
    """Remove references by reference id, sha256, or the path of the original file."""
    from ..identify import open_store

    cfg = config_from_flags(ctx, **flags)
    resolved = []
    for key in keys:
        p = Path(key)
        resolved.append((sha256_file_or_none(p) or key) if p.is_file() else key)
    with open_store(cfg.store, embedder_identity=None, dim=None, create=False) as store:
        n = store.remove(resolved)
    click.echo(f"removed {n} of {len(keys)}")
    sys.exit(EXIT_OK if n == len(keys) else EXIT_SOFT_FAIL)


@click.command("query")
@click.argument("files", nargs=-1, required=True, type=click.Path())
@click.option("--k", type=int, default=None, help="Matches to return per query (match.k).")
@click.option("--threshold", type=float, default=None, help="Decision threshold on the cosine score (match.threshold).")
@click.option("--json", "as_json", is_flag=True, help="One JSON report per line.")
@config_option_flags
@click.pass_context
@handle_errors
def query(ctx: click.Context, files: tuple[str, ...], as_json: bool, **flags: Any) -> None:
    """Identify the origin of each FILE (folders recurse). Exit 1 if any file has no match or is bad media."""
    from ..identify import Identifier

    cfg = config_from_flags(ctx, **flags)
    ident = Identifier.from_config(cfg)
    soft_fail = False
    paths = iter_image_files(list(files))
    with ident.context.store:
        soft_fail = _query_paths(ident, paths, as_json)
    sys.exit(EXIT_SOFT_FAIL if soft_fail else EXIT_OK)


def _query_paths(ident: Any, paths: list[Path], as_json: bool) -> bool:
    soft_fail = False
    for path in paths:
        try:
            report = ident.identify(path)
        except MediaError as exc:
            soft_fail = True
            if as_json:
                echo_json({"query": str(path), "error": str(exc)})
            else:
                click.echo(f"{path}: ERROR {exc}", err=True)
            continue
        soft_fail |= not report.is_match
        if as_json:
            echo_json(report.to_dict())
            continue
        click.echo(f"{path}: {report.decision.upper()} (threshold {report.threshold:.3f})")
        for m in report.matches:
            evidence = "".join(f" {name}={score:.3f}" for name, score in m.signals)
            click.echo(f"  #{m.rank} score={m.score:.4f}{evidence} id={m.reference_id} {m.uri}")
    return soft_fail


@click.command("embed")
@click.argument("files", nargs=-1, required=True, type=click.Path())
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output .npz (embeddings, paths).")
@config_option_flags
@click.pass_context
@handle_errors
def embed(ctx: click.Context, files: tuple[str, ...], out: str, **flags: Any) -> None:
    """Embed FILEs (folders recurse) into an .npz with arrays ``embeddings`` and ``paths``."""
    from ..identify import build_embedder

    cfg = config_from_flags(ctx, **flags)
    embedder = build_embedder(cfg.embedder)
    paths = iter_image_files(list(files))
    vecs, names, bad = [], [], 0
    for item in embedder.embed_iter(paths, progress="embedding", total=len(paths)):
        if item.error is not None:
            bad += 1
            click.echo(f"skipped {item.error}", err=True)
            continue
        vecs.append(item.vector)
        names.append(describe(item.source))
    arr = np.stack(vecs) if vecs else np.zeros((0, embedder.dim), np.float32)
    np.savez(out, embeddings=arr, paths=np.array(names), embedder=np.array(embedder.identity))
    click.echo(f"wrote {len(vecs)} embeddings of dim {embedder.dim} to {out}" + (f"; {bad} failed" if bad else ""))
    sys.exit(EXIT_SOFT_FAIL if bad else EXIT_OK)


@click.group("config")
def config_group() -> None:
    """Inspect configuration."""


@config_group.command("show")
@click.pass_context
@handle_errors
def config_show(ctx: click.Context) -> None:
    """Print the effective configuration (file + --set overrides) as YAML."""
    from ..identify import resolve_embedder_name, sscd_available

    cfg = get_state(ctx).config()
    click.echo(f"# source: {cfg.source or 'defaults'}")
    active = resolve_embedder_name(cfg.embedder)
    why = "" if cfg.embedder.name != "auto" else (
        " (SSCD resolved)" if active == "fused" else f" (SSCD unavailable: {(sscd_available(cfg.embedder) or '').splitlines()[0]})")
    click.echo(f"# active embedder: {active}{why}")
    click.echo(cfg.to_yaml(), nl=False)


@click.command("quantize")
@click.argument("photos", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Models folder to write taef2/taef2_encoder_int8.onnx into (default: the first $ID2_MODELS_DIR entry).")
@click.option("--images", "count", type=int, default=100, show_default=True, help="Calibration photos used (spread over PHOTOS).")
@click.pass_context
@handle_errors
def quantize(ctx: click.Context, photos: tuple[str, ...], out_dir: str | None, count: int) -> None:
    """Make the int8 TAEF2 encoder (embedder.precision=int8) here, calibrated on PHOTOS (files or folders).

    Use photos like the ones you will index; they are read into memory only. Takes a few minutes on a CPU.
    """
    import os

    from ..embedders.taef2_int8 import quantize_taef2
    from ..errors import ConfigError

    cfg = get_state(ctx).config()
    out_dir = out_dir or next((p for p in os.environ.get("ID2_MODELS_DIR", "").split(os.pathsep) if p), None)
    if out_dir is None:
        raise ConfigError("quantize needs --out DIR (or $ID2_MODELS_DIR) for the int8 model")
    files = iter_image_files(list(photos))
    path = quantize_taef2(out_dir, files, weights=cfg.embedder.weights, count=count, input_size=cfg.embedder.input_size)
    click.echo(f"wrote {path} (calibrated on {min(count, len(files))} photos); use it with ID2_MODELS_DIR={out_dir} "
               f"and embedder.precision=int8 (or auto)")


@hookimpl
def id2_register_commands(cli: click.Group) -> None:
    for cmd in (index_group, query, embed, config_group, quantize):
        cli.add_command(cmd)
