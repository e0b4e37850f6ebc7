"""The ``quantize`` feature: make the int8 TAEF2 encoder, or export the fp32 one for ONNX Runtime."""

from __future__ import annotations

import os
import sys

import click

from ..cli_support import expand_inputs, get_state, handle_errors, outcome_code
from ..embedders.taef2_int8 import export_taef2_fp32, quantize_taef2
from ..errors import ConfigError
from ..hookspecs import hookimpl


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
    cli.add_command(quantize)
