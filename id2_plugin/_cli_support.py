"""Shared plumbing for CLI commands (built-in and third-party): config loading, exit codes, output."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any

import click

from .config import Config, load_config, parse_override
from .errors import ConfigError, Id2Error, MediaError, MissingExtraError, ModelNotFoundError

#: Exit codes (the README's table): 0 ok; 1 some query had no match or some input could not be read (each
#: reported, the rest processed); 2 usage or configuration error (options, config file, weights, W, paths
#: that hold no image); 3 store error (missing, locked, damaged, incompatible) or another runtime failure.
EXIT_OK, EXIT_SOFT_FAIL, EXIT_USAGE, EXIT_STORE = 0, 1, 2, 3


class CliState:
    """Carried in ``click.Context.obj``: the config file and overrides given on the command line."""

    def __init__(self, config_path: str | None, overrides: tuple[str, ...]) -> None:
        self.config_path = config_path
        self.overrides: dict[str, Any] = {}
        for text in overrides:
            from .config import _merge

            self.overrides = _merge(self.overrides, parse_override(text))
        self._cache: dict[str, Any] = {}

    def config(self, **extra: Any) -> Config:
        """Effective config: file, then ``--set`` overrides, then command flags (``extra``, dotted keys)."""
        from .config import _merge, nested_override

        overrides = dict(self.overrides)
        for dotted, value in extra.items():
            if value is not None:
                overrides = _merge(overrides, nested_override(dotted, value))
        return load_config(self.config_path, overrides)


def get_state(ctx: click.Context) -> CliState:
    root = ctx.find_root()
    if not isinstance(root.obj, CliState):
        root.obj = CliState(None, ())
    return root.obj


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library errors into one clear line on stderr and the documented exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Id2Error as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exit_code_for(exc))

    return wrapper


def exit_code_for(exc: Id2Error) -> int:
    """The documented exit code of a library error (one table for every command, built-in or plugin)."""
    if isinstance(exc, (ConfigError, MissingExtraError, ModelNotFoundError)):
        return EXIT_USAGE
    if isinstance(exc, MediaError):
        return EXIT_SOFT_FAIL
    return EXIT_STORE  # StoreError and any other runtime failure


def expand_inputs(paths: Any) -> tuple[list[Any], list[str]]:
    """Image files under ``paths``, and the paths that could not be walked, each reported on stderr.

    The caller exits 1 when there were problems; paths that hold no image and no problem are a usage error
    (a silent exit 0 would read as success).
    """
    from .media import scan_image_files

    scan = scan_image_files(list(paths))
    for line in scan.problems:
        click.echo(f"skipped {line}", err=True)
    if not scan.files and not scan.problems:
        raise ConfigError(f"no image files found in {', '.join(map(str, paths))}")
    return scan.files, scan.problems


def echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=None, default=str))


def config_option_flags(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Common flags that override the embedder / store / match sections."""
    opts = [
        click.option("--store", "store_path", default=None, help="Reference store folder (store.path)."),
        click.option("--embedder", "embedder_name", default=None, help="Embedder name (embedder.name)."),
        click.option("--projection", default=None, help="'default', 'none' (raw latent) or a W .safetensors path."),
        click.option("--device", default=None, help="auto, cpu, cuda, cuda:N (embedder.device)."),
        click.option("--batch-size", type=int, default=None, help="Images per forward pass (embedder.batch_size)."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


#: ``--cache DIR``: the opt-in latent cache (cache.dir); without it nothing derived from the images is kept.
cache_option = click.option(
    "--cache", "cache", default=None, type=click.Path(file_okay=False),
    help="Keep TAEF2 latents in DIR to skip re-encoding on reruns (cache.dir). Off by default: cached "
         "latents decode back into near-copies of the images; 'id2-plugin cache purge' deletes them.")


def config_from_flags(ctx: click.Context, **flags: Any) -> Config:
    return get_state(ctx).config(
        **{
            "store.path": flags.get("store_path"),
            "embedder.name": flags.get("embedder_name"),
            "embedder.projection": flags.get("projection"),
            "embedder.device": flags.get("device"),
            "embedder.batch_size": flags.get("batch_size"),
            "match.k": flags.get("k"),
            "match.threshold": flags.get("threshold"),
            "cache.dir": flags.get("cache"),
        }
    )
