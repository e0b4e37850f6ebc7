"""Built-in plugin of the robustness suite: registers the attacks and the ``robustness`` command.

Listed in :data:`id2_plugin.plugins.DEFAULT_PLUGINS`, so it goes through the same hooks as a third-party
plugin. Importing it is cheap (numpy and Pillow); models and matplotlib load only when the command runs.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import click

from id2_plugin.assembly import decision_settings
from id2_plugin.cli_support import (
    EXIT_OK,
    EXIT_UNREADABLE,
    cache_option,
    config_from_flags,
    embedder_option_flags,
    handle_errors,
    scan_inputs,
)
from id2_plugin.errors import ConfigError
from id2_plugin.hookspecs import hookimpl
from id2_plugin.pipeline import embedder_from_config
from id2_plugin.plugins import attack_factories

from .attacks import BUILTIN_ATTACKS, SuiteEntry, default_suite, parse_attack_spec, subsample_levels
from .datasets import pairs_set, photos_set
from .methods import build_methods
from .report import headline_rows, write_reports
from .suite import RESIZE_POLICIES, run_robustness


@hookimpl
def id2_register_attacks(register: Any) -> None:
    for name, factory in BUILTIN_ATTACKS.items():
        register(name, factory)


@click.command("robustness")
@click.option(
    "--pairs",
    "pairs",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Pairs manifest (JSONL query/origin): the edited queries are attacked.",
)
@click.option(
    "--photos",
    "photos",
    type=click.Path(exists=True),
    default=None,
    help="Folder of photos: each unedited photo is a reference and, attacked, a query (image-copy case).",
)
@click.option(
    "--distractors",
    multiple=True,
    type=click.Path(exists=True),
    help="Extra reference images/folders (repeatable; may be the --photos folder: queries are skipped there).",
)
@click.option("--max-distractors", type=int, default=None, help="Use at most this many distractors.")
@click.option(
    "--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder for the reports."
)
@click.option(
    "--limit", type=int, default=None, help="Use at most N queries (the first N, sorted by name / manifest order)."
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the attacks (same seed = same pixels).")
@click.option(
    "--attack",
    "attack_specs",
    multiple=True,
    metavar="SPEC",
    help="Attack family instead of the default suite, e.g. 'jpeg:90,50,30', 'blur:1,3' or a chain "
    "'downscale:0.5+jpeg:70,30'; names come from the attack registry (plugins included). Repeatable.",
)
@click.option(
    "--levels",
    "n_levels",
    type=int,
    default=0,
    help="Keep N levels per family, spread from mild to the strongest (0 = all).",
)
@click.option(
    "--methods",
    default=None,
    help="Comma-separated subset of fused, id2, vae_raw, sscd, pdq, phash (default: all available; id2 needs a W).",
)
@click.option(
    "--compare-resize-policies",
    is_flag=True,
    help="Also evaluate id2/vae_raw with the other resize policies (squash, center_crop, pad).",
)
@click.option(
    "--failures",
    "n_failures",
    type=int,
    default=3,
    show_default=True,
    help="Failure examples kept per method and attack level.",
)
@click.option("--pdf/--no-pdf", default=True, show_default=True, help="Also write report.pdf.")
@cache_option
@embedder_option_flags
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.pass_context
@handle_errors
def robustness_command(
    ctx: click.Context,
    pairs: str | None,
    photos: str | None,
    distractors: tuple[str, ...],
    max_distractors: int | None,
    out_dir: str,
    limit: int | None,
    seed: int,
    attack_specs: tuple[str, ...],
    n_levels: int,
    methods: str | None,
    compare_resize_policies: bool,
    n_failures: int,
    pdf: bool,
    quiet: bool,
    **flags: Any,
) -> None:
    """Attack queries at every level and measure id2, raw VAE, PDQ and pHash on them.

    Writes OUT/report.json (every curve point), OUT/curves.csv, a self-contained OUT/report.html (plots,
    tables, failure examples, provenance) and OUT/report.pdf.

    Resuming: attacks are seeded, so a rerun (or a run with more queries or levels) produces identical
    pixels; with --cache DIR latents are read from that cache instead of being encoded again, so an
    interrupted run resumes where it stopped. Without --cache nothing but the reports is written.
    Exit 4 (after writing the reports) when a folder scan skipped a path (an unreadable folder, a dangling
    link, a symlink loop): each is reported on stderr and listed in the report's notes.
    """
    if (pairs is None) == (photos is None):
        raise ConfigError("give exactly one of --pairs MANIFEST or --photos DIR")
    suite = _attack_suite(attack_specs, n_levels)
    names = [m.strip() for m in methods.split(",") if m.strip()] if methods else None

    cfg = config_from_flags(ctx, **flags)
    cache_dir = cfg.cache.dir
    limits = cfg.media.limits()
    needs_model = names is None or bool({"id2", "vae_raw", "sscd", "fused"} & set(names))
    embedder = embedder_from_config(cfg, in_memory_only=True) if needs_model else None
    decision, threshold = decision_settings(cfg.match, embedder) if embedder is not None else (None, 0.5)
    method_list = build_methods(
        embedder, names, cache_root=cache_dir, use_cache=cache_dir is not None, decision=decision
    )
    dataset, problems = _dataset(photos, pairs, distractors, limit, max_distractors)
    click.echo(
        f"{dataset.kind}: {len(dataset.query_paths)} queries, {len(dataset.reference_paths)} references; "
        f"{sum(len(e.levels) for e in suite)} attack levels; methods {', '.join(m.name for m in method_list)}",
        err=True,
    )
    result = run_robustness(
        dataset,
        method_list,
        suite,
        seed=seed,
        embedder=embedder,
        compare_policies=RESIZE_POLICIES if compare_resize_policies else (),
        cache_root=cache_dir,
        use_cache=cache_dir is not None,
        n_failures=n_failures,
        limits=limits,
        progress=not quiet,
        command=_command_line(ctx),
        threshold=threshold,
    )
    paths = write_reports(result, out_dir, pdf=pdf)
    _print_summary(result)
    for kind, p in paths.items():
        click.echo(f"wrote {kind}: {p}")
    sys.exit(EXIT_UNREADABLE if problems else EXIT_OK)


def _attack_suite(attack_specs: tuple[str, ...], n_levels: int) -> list[SuiteEntry]:
    """The attacks named by ``--attack`` (default: the standard suite), each with ``n_levels`` of its levels."""
    factories = attack_factories()
    try:
        suite = [parse_attack_spec(s, factories) for s in attack_specs] if attack_specs else default_suite()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return [SuiteEntry(e.family, subsample_levels(e.levels, n_levels)) for e in suite]


def _dataset(
    photos: str | None, pairs: str | None, distractors: tuple[str, ...], limit: int | None, max_distractors: int | None
) -> tuple[Any, list[str]]:
    """The photos or pairs set, plus the paths its folder scans had to skip (each reported, noted in the report)."""
    distractor_files, problems = scan_inputs(distractors)
    if photos is not None:
        photo_files, photo_problems = scan_inputs([photos])
        problems = photo_problems + problems
        if not photo_files:
            raise ConfigError(f"no image files found in {photos}")
        dataset = photos_set(photo_files, distractor_files, limit=limit, max_distractors=max_distractors)
    else:
        dataset = pairs_set(pairs, distractor_files, limit=limit, max_distractors=max_distractors)  # type: ignore[arg-type]
    return dataclasses.replace(dataset, skipped=[*problems, *dataset.skipped]), problems


def _command_line(ctx: click.Context) -> list[str]:
    """The effective invocation with the real flag names, rebuilt from the parsed options (``sys.argv`` is
    the host's when the CLI is embedded), global options (``--config``, ``--set``) included: it re-runs."""
    root = ctx.find_root()
    return ["id2-plugin", *_param_words(root), ctx.info_name or "robustness", *_param_words(ctx)]


def _param_words(ctx: click.Context) -> list[str]:
    words: list[str] = []
    for param in ctx.command.params:
        value = ctx.params.get(param.name or "")
        if value is None or value == () or not isinstance(param, (click.Option, click.Argument)):
            continue
        if isinstance(param, click.Argument):
            words += [str(v) for v in (value if isinstance(value, tuple) else (value,))]
        elif param.is_flag:
            if value is True or (not param.is_bool_flag and value == param.flag_value):
                words.append(param.opts[0])
            elif value is False and param.secondary_opts:
                words.append(param.secondary_opts[0])
        elif isinstance(value, tuple):
            for v in value:
                words += [param.opts[0], str(v)]
        else:
            words += [param.opts[0], str(value)]
    return words


def _print_summary(result: Any) -> None:
    headers, rows = headline_rows(result)
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    click.echo("top-1 accuracy")
    for r in [headers, *rows]:
        click.echo("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    for method, f in result.findings().items():
        for metric in ("top1", "micro_ap", "recall_at_p999"):
            values = ", ".join(f"{k} {v:.3f}" for k, v in f[f"mean_{metric}"].items())
            click.echo(f"resize policy, {method}: mean {metric} over attacked levels: {values}")


@hookimpl
def id2_register_commands(cli: click.Group) -> None:
    cli.add_command(robustness_command)
