"""Built-in command group ``cache``: ``cache purge`` deletes cached latents (they decode back into images)."""

from __future__ import annotations

from pathlib import Path

import click

from ..cli_support import cache_option, echo_json, get_state, handle_errors
from ..hookspecs import hookimpl


@click.group("cache")
def cache_group() -> None:
    """Manage the opt-in latent cache."""


@cache_group.command("purge")
@cache_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
@handle_errors
def cache_purge(ctx: click.Context, cache: str | None, as_json: bool) -> None:
    """Delete the latents under --cache DIR / cache.dir, and those earlier releases left in ~/.cache/id2_plugin."""
    from ..cache import legacy_cache_dir, purge

    cfg = get_state(ctx).config(**{"cache.dir": cache})
    # Earlier releases cached every image unasked in the legacy folder: purge it too, whatever is configured.
    roots = list(dict.fromkeys(Path(r) for r in (cfg.cache.dir, legacy_cache_dir()) if r is not None))
    removed: dict[str, int] = {str(r): purge(r) for r in roots}
    if as_json:
        echo_json({"removed": removed})
        return
    for root, n in removed.items():
        click.echo(f"{root}: removed {n} cached latent(s)")


@hookimpl
def id2_register_commands(cli: click.Group) -> None:
    cli.add_command(cache_group)
