"""The ``scan-video`` command: find reference images inside videos (keyframes or fixed-rate samples)."""

from __future__ import annotations

import sys
from contextlib import ExitStack
from typing import Any

import click

from ..cli_support import (
    config_from_flags,
    config_option_flags,
    handle_errors,
    match_option_flags,
    outcome_code,
    printable,
    ray_option_flags,
)
from ..errors import ConfigError, MediaError
from ..hookspecs import hookimpl


@click.command("scan-video")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option(
    "--keyframes",
    "keyframes_only",
    is_flag=True,
    help="Embed keyframes only; other frames are skipped at the decoder (the default).",
)
@click.option("--fps", type=float, default=None, help="Instead of keyframes, sample F frames per second.")
@click.option("--json", "fmt", flag_value="jsonl", help="JSON Lines output: one object per video.")
@click.option("--csv", "fmt", flag_value="csv", help="CSV output: one row per matched frame and reference.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write results to FILE as each video finishes (default: stdout).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Videos decoded concurrently (threads sharing one model).",
)
@click.option("--no-dedupe", is_flag=True, help="Embed near-duplicate consecutive frames too.")
@click.option(
    "--dedupe-threshold",
    type=float,
    default=None,
    help="Mean 16x16 gray difference (0-255) below which a frame repeats the last kept one [3.0].",
)
@match_option_flags
@click.option("--ray", "use_ray", is_flag=True, help="Run the per-video scans as a Ray Data pipeline.")
@ray_option_flags("--ray-workers", "Ray actors, each loading the model and opening the store once.")
@config_option_flags
@click.pass_context
@handle_errors
def scan_video_command(
    ctx: click.Context,
    paths: tuple[str, ...],
    keyframes_only: bool,
    fps: float | None,
    fmt: str | None,
    out: str | None,
    workers: int,
    no_dedupe: bool,
    dedupe_threshold: float | None,
    use_ray: bool,
    ray_address: str | None,
    ray_workers: int,
    cpus_per_worker: float,
    **flags: Any,
) -> None:
    """Find reference images in videos (folders recurse). Exit 1 if some video matched no reference, 4 if
    some video could not be fully decoded (reported with the frames read before the fault)."""
    from ..pipeline import Pipeline, RayExecutor
    from ..video import DEFAULT_DEDUPE_THRESHOLD, VideoReportWriter, format_report_text, iter_video_files

    cfg = config_from_flags(ctx, **flags)
    if fps is not None and keyframes_only:
        raise click.UsageError("--keyframes and --fps are alternatives; give one")
    mode = "fps" if fps is not None else "keyframes"
    files = iter_video_files(list(paths))
    if not files:
        raise ConfigError(f"no video files found under {', '.join(paths)}")
    missing = [f for f in files if not f.exists()]
    for f in missing:  # before the model loads: a mistyped path fails at once
        click.echo(printable(f"skipped {f}: not found"), err=True)
    files = [f for f in files if f.exists()]
    if not files:
        raise MediaError(f"nothing to read: every path given was skipped ({len(missing)})")
    options: dict[str, Any] = dict(
        mode=mode,
        fps=fps,
        dedupe=not no_dedupe,
        dedupe_threshold=DEFAULT_DEDUPE_THRESHOLD if dedupe_threshold is None else dedupe_threshold,
    )
    failed = unmatched = 0
    with ExitStack() as stack:
        stream = stack.enter_context(open(out, "w", encoding="utf-8", newline="")) if out else sys.stdout
        writer = VideoReportWriter(stream, fmt) if fmt else None  # type: ignore[arg-type]
        pipeline = stack.enter_context(Pipeline.from_config(cfg))
        if use_ray:
            executor = RayExecutor(address=ray_address, workers=ray_workers, cpus_per_worker=cpus_per_worker)
            reports = pipeline.scan_videos(files, executor=executor, progress=True, **options)
        else:
            reports = pipeline.scan_videos(files, workers=workers, progress=True, **options)
        for report in reports:
            failed += not report.ok
            unmatched += not report.is_match
            if writer is not None:
                writer.write(report)
            else:
                stream.write(format_report_text(report))
                stream.flush()
            if report.error and (out or writer is not None):
                # Keep failures visible on the terminal even when results go to a file or a data format.
                click.echo(printable(f"{report.path}: ERROR ({report.error_kind}) {report.error}"), err=True)
    click.echo(
        f"scanned {len(files)} videos, {failed} failed"
        + (f", {len(missing)} not found" if missing else "")
        + (f"; results in {out}" if out else ""),
        err=True,
    )
    sys.exit(outcome_code(unreadable=failed + len(missing), no_match=unmatched))


@hookimpl
def id2_register_commands(cli: click.Group) -> None:
    cli.add_command(scan_video_command)
