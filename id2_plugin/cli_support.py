"""The CLI toolkit for commands, built-in and third-party: shared options, config loading, exit codes, output."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any

import click

from .config import Config, load_config, parse_override
from .errors import ConfigError, Id2Error

#: Exit codes: 0 ok, 1 no match / bad media reported per file, 2 usage / config error.
EXIT_OK, EXIT_SOFT_FAIL, EXIT_USAGE = 0, 1, 2


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


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library errors into one clear line on stderr and the documented exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_USAGE)
        except Id2Error as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_USAGE)

    return wrapper


def echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=None, default=str))


def embedder_option_flags(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The flags that override the embedder section."""
    opts = [
        click.option("--embedder", "embedder_name", default=None, help="Embedder name (embedder.name)."),
        click.option("--projection", default=None, help="'default', 'none' (raw latent) or a W .safetensors path."),
        click.option("--device", default=None, help="auto, cpu, cuda, cuda:N (embedder.device)."),
        click.option("--batch-size", type=int, default=None, help="Images per forward pass (embedder.batch_size)."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def config_option_flags(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The shared flags of every command that uses a store: ``--store`` and the embedder flags."""
    fn = embedder_option_flags(fn)
    return click.option("--store", "store_path", default=None, help="Reference store folder (store.path).")(fn)


def match_option_flags(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--k`` and ``--threshold``: the match section, for commands that decide matches."""
    fn = click.option("--threshold", type=float, default=None,
                      help="Decision threshold on the cosine score (match.threshold).")(fn)
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
}


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
