"""MkDocs hook: the command reference is each command's own ``--help``, taken from the click commands.

A page holding the marker below gets, in its place, every command of ``id2-plugin`` (built-in and from
the plugins installed where the docs are built) with its help text, so the reference cannot drift from
the code.
"""

from __future__ import annotations

import click

MARKER = "<!-- generated: id2-plugin --help -->"
_WIDTH = 100  # the CLI's own max_content_width, so the text reads as in a terminal


def _walk(cmd: click.Command, ctx: click.Context):
    yield ctx, cmd
    if isinstance(cmd, click.Group):
        for name in sorted(cmd.commands):
            sub = cmd.commands[name]
            if not sub.hidden:
                yield from _walk(sub, click.Context(sub, info_name=name, parent=ctx, terminal_width=_WIDTH))


def commands_markdown() -> str:
    """One section per command: its full name as the heading, its ``--help`` as text."""
    from id2_plugin import cli

    cli.load_commands()  # what main() does before parsing: plugins add the commands
    root = click.Context(cli.cli, info_name="id2-plugin", terminal_width=_WIDTH)
    out = []
    for ctx, cmd in _walk(cli.cli, root):
        out.append(f"### `{ctx.command_path}`\n\n```text\n{cmd.get_help(ctx)}\n```\n")
    return "\n".join(out)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, commands_markdown())
