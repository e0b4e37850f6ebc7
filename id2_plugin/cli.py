"""The ``id2-plugin`` command line: a thin click group; commands come from plugins (built-ins included)."""

from __future__ import annotations

import sys

import click

from .cli_support import EXIT_USAGE, CliState, exit_code_for, index_group, printable
from .errors import Id2Error
from .plugins import get_plugin_manager


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    envvar="ID2_CONFIG",
    help="YAML config file (default: $ID2_CONFIG, else ./id2.yaml if present).",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config key, e.g. --set match.threshold=0.6 (repeatable).",
)
@click.version_option(package_name="id2-plugin")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, overrides: tuple[str, ...]) -> None:
    """Find the original of an AI-edited or degraded image in a reference collection (ID2 method)."""
    try:
        ctx.obj = CliState(config_path, overrides)
    except Id2Error as exc:
        click.echo(f"error: {printable(exc)}", err=True)
        sys.exit(EXIT_USAGE)


# Shared groups belong to the root; the features' plugins fill them.
cli.add_command(index_group)


def load_commands() -> None:
    """Add every plugin's commands to :data:`cli` (what :func:`main` does first; tests and the docs build call it)."""
    get_plugin_manager().hook.id2_register_commands(cli=cli)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    try:
        load_commands()
    except Id2Error as exc:
        click.echo(f"error: {printable(exc)}", err=True)
        sys.exit(exit_code_for(exc))
    cli.main(args=argv, prog_name="id2-plugin")


if __name__ == "__main__":
    main()
