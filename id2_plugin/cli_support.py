"""The CLI toolkit for commands, built-in and third-party: shared options, config loading, exit codes, output."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any

import click

from .config import Config, load_config, parse_override
from .errors import ConfigError, Id2Error, MediaError, MissingExtraError, ModelNotFoundError

#: Exit codes, one table for every command (docs/reference/exit-codes.md): 0 ok; 1 no match (a query, video or key
#: matched nothing); 2 usage or configuration error (options, config file, weights, W, paths that hold no
#: image); 3 store error (missing, locked, damaged, incompatible) or another runtime failure; 4 some input
#: was unreadable or skipped (each reported, the rest processed). 4 wins over 1: an answer that left
#: inputs out is incomplete, whatever the rest found.
EXIT_OK, EXIT_NO_MATCH, EXIT_USAGE, EXIT_STORE, EXIT_UNREADABLE = 0, 1, 2, 3, 4


#: The ``index`` group, shared: several features add subcommands to it (``add``/``info``/``remove``,
#: ``tune``/``compact``/``verify``, ``add-ray``), each from its own plugin, so disabling one plugin drops only
#: its subcommands. The root command registers the group (:mod:`id2_plugin.cli`).
@click.group("index")
def index_group() -> None:
    """Manage the reference store."""


def outcome_code(*, unreadable: bool | int = False, no_match: bool | int = False) -> int:
    """The exit code of a command that processed its inputs: unreadable ones first, then misses."""
    if unreadable:
        return EXIT_UNREADABLE
    return EXIT_NO_MATCH if no_match else EXIT_OK


class CliState:
    """Carried in ``click.Context.obj``: the config file and overrides given on the command line."""

    def __init__(self, config_path: str | None, overrides: tuple[str, ...]) -> None:
        self.config_path = config_path
        self.overrides: dict[str, Any] = {}
        for text in overrides:
            from .config import merge_overrides

            self.overrides = merge_overrides(self.overrides, parse_override(text))
        self._cache: dict[str, Any] = {}

    def config(self, **extra: Any) -> Config:
        """Effective config: file, then ``--set`` overrides, then command flags (``extra``, dotted keys)."""
        from .config import merge_overrides, nested_override

        overrides = dict(self.overrides)
        for dotted, value in extra.items():
            if value is not None:
                overrides = merge_overrides(overrides, nested_override(dotted, value))
        return load_config(self.config_path, overrides)


def get_state(ctx: click.Context) -> CliState:
    root = ctx.find_root()
    if not isinstance(root.obj, CliState):
        root.obj = CliState(None, ())
    return root.obj


def printable(text: Any) -> str:
    """``text`` on one line: control characters (newlines, escapes) shown as escapes (``\\n``, ``\\x1b``).

    File names may hold any character but ``/``: a name with a newline would otherwise print lines of its
    own, e.g. a forged ``#1 score=1.0000 ...`` match under a query.
    """
    s = str(text)
    return s if s.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library errors into one clear line on stderr and the documented exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Id2Error as exc:
            click.echo(f"error: {printable(exc)}", err=True)
            sys.exit(exit_code_for(exc))

    return wrapper


def exit_code_for(exc: Id2Error) -> int:
    """The documented exit code of a library error (one table for every command, built-in or plugin)."""
    if isinstance(exc, (ConfigError, MissingExtraError, ModelNotFoundError)):
        return EXIT_USAGE
    if isinstance(exc, MediaError):
        return EXIT_UNREADABLE
    return EXIT_STORE  # StoreError and any other runtime failure


def expand_inputs(paths: Any) -> tuple[list[Any], list[str]]:
    """Image files under ``paths``, and the paths that could not be walked, each reported on stderr.

    The caller exits ``EXIT_UNREADABLE`` when there were problems; paths that hold no image and no problem
    are a usage error (a silent exit 0 would read as success). When nothing at all is readable this raises
    (exit 4) before the caller loads a model for no input.
    """
    files, problems = scan_inputs(paths)
    if not files:
        if problems:
            raise MediaError(f"nothing to read: every path given was skipped ({len(problems)})")
        raise ConfigError(f"no image files found in {', '.join(map(str, paths))}")
    return files, problems


def scan_inputs(paths: Any) -> tuple[list[Any], list[str]]:
    """Like :func:`expand_inputs` for optional inputs (``--distractors``): no image at all is not an error.

    Each problem is reported on stderr as ``skipped ...`` and returned in that form, so a command can list
    it in its JSON and exit 4 (``EXIT_UNREADABLE``) after finishing the rest.
    """
    from .eval_sets import scan_folders

    return scan_folders(paths, lambda line: report_problems([line]))


def report_problems(lines: Any) -> None:
    """Each skipped input on stderr, one per line, made printable (file names may hold control characters)."""
    for line in lines:
        click.echo(printable(line), err=True)


def report_ingest(result: Any, problems: list[str]) -> None:
    """Print an ``index add``'s outcome (each skipped file on stderr, then the counts) and exit with its code:
    4 when some input could not be read (``problems``: paths that could not be expanded)."""
    for what, why in result.failures:
        click.echo(printable(f"skipped {what}: {why}"), err=True)
    failed = len(result.failures) + len(problems)
    click.echo(
        f"added {len(result.added)}, duplicates skipped {len(result.duplicates)}, failed {failed}; "
        f"store now holds {result.store_count} references"
    )
    sys.exit(outcome_code(unreadable=failed))


def echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=None, default=str))


def embedder_option_flags(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The flags that override the embedder section."""
    opts = [
        click.option("--embedder", "embedder_name", default=None, help="Embedder name (embedder.name)."),
        click.option("--projection", default=None, help="'default', 'none' (raw latent) or a W .safetensors path."),
        click.option("--device", default=None, help="auto, cpu, cuda, cuda:N (embedder.device)."),
        click.option(
            "--batch-size",
            default=None,
            callback=parse_batch_size,
            help="Images per forward pass, or 'auto' to tune it on the first batches (embedder.batch_size).",
        ),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def config_option_flags(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The shared flags of every command that uses a store: ``--store`` and the embedder flags."""
    fn = embedder_option_flags(fn)
    return click.option("--store", "store_path", default=None, help="Reference store folder (store.path).")(fn)


def ray_option_flags(workers_flag: str, workers_help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--ray-address``, the actor count (``workers_flag``) and ``--cpus-per-worker``: one Ray job's resources."""

    def add(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn = click.option(
            "--cpus-per-worker",
            type=click.FloatRange(min=0, min_open=True),
            default=1.0,
            show_default=True,
            help="CPUs reserved per Ray actor.",
        )(fn)
        fn = click.option(workers_flag, type=click.IntRange(min=1), default=1, show_default=True, help=workers_help)(fn)
        return click.option(
            "--ray-address",
            default=None,
            help="Ray cluster to use ('auto', 'ray://host:10001'); default: start a local Ray.",
        )(fn)

    return add


def match_option_flags(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--k`` and ``--threshold``: the match section, for commands that decide matches."""
    fn = click.option(
        "--threshold", type=float, default=None, help="Decision threshold on the cosine score (match.threshold)."
    )(fn)
    return click.option("--k", type=int, default=None, help="Matches to return per query (match.k).")(fn)


#: command flag -> the config key it overrides (flags left at None keep the file's value)
FLAG_KEYS = {
    "store_path": "store.path",
    "embedder_name": "embedder.name",
    "projection": "embedder.projection",
    "device": "embedder.device",
    "batch_size": "embedder.batch_size",
    "k": "match.k",
    "threshold": "match.threshold",
    "rotations": "match.rotations",
    "mirror": "match.mirror",
    "windows": "match.windows",
    "cache": "cache.dir",
}


def pairs_option(help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--pairs MANIFEST`` (required, repeatable: the manifests are pooled) as ``pairs_paths``; a missing
    manifest is reported by the loader, naming it."""
    return click.option(
        "--pairs",
        "pairs_paths",
        required=True,
        multiple=True,
        type=click.Path(dir_okay=False),
        help=f"{help} Repeatable: the manifests are pooled.",
    )


def negatives_option(help: str, *, required: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--negatives DIR``: unrelated queries (folders recurse; repeatable) as ``negative_dirs``."""
    return click.option(
        "--negatives",
        "negative_dirs",
        required=required,
        multiple=True,
        type=click.Path(exists=True),
        help=f"{help} (folders recurse; repeatable).",
    )


def distractors_option(help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--distractors PATH``: references without queries (folders recurse; repeatable)."""
    return click.option(
        "--distractors",
        multiple=True,
        type=click.Path(exists=True),
        help=f"{help} (folders recurse; repeatable).",
    )


def per_query_option(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--per-query FILE`` as ``per_query_path``: one record per ``what`` (.csv, else JSON Lines)."""
    return click.option(
        "--per-query",
        "per_query_path",
        type=click.Path(dir_okay=False),
        default=None,
        help=f"Write one record per {what} to FILE (.csv, else JSON Lines): origin, its rank and score, the best "
        "wrong reference and its score (PDQ/pHash also in Hamming bits).",
    )


#: ``--cache DIR``: the opt-in latent cache (cache.dir); without it nothing derived from the images is kept.
cache_option = click.option(
    "--cache",
    "cache",
    default=None,
    type=click.Path(file_okay=False),
    help="Keep TAEF2 latents in DIR to skip re-encoding on reruns (cache.dir). Off by default: cached "
    "latents decode back into near-copies of the images; 'id2-plugin cache purge' deletes them.",
)


def parse_batch_size(ctx: click.Context, param: click.Parameter, value: str | None) -> int | str | None:
    """``"16"`` -> 16, ``"auto"`` kept (validated by the config)."""
    if value is None or value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected an integer >= 1 or 'auto'") from None


def parse_rotations(ctx: click.Context, param: click.Parameter, value: str | None) -> list[int] | None:
    """``"0,90,180"`` -> ``[0, 90, 180]`` (validated by the config: 0, 90, 180, 270)."""
    if value is None:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected degrees separated by commas, e.g. 0,90,180,270") from None


def config_from_flags(ctx: click.Context, *, extra_keys: dict[str, str] | None = None, **flags: Any) -> Config:
    """The effective config with the shared flags (and ``extra_keys``: flag -> config key) applied."""
    keys = {**FLAG_KEYS, **(extra_keys or {})}
    return get_state(ctx).config(**{dotted: flags.get(flag) for flag, dotted in keys.items()})
