"""The ``config`` feature: ``config show`` prints the effective configuration and the active embedder."""

from __future__ import annotations

import click

from ..assembly import resolve_embedder_name, sscd_available
from ..cli_support import get_state, handle_errors
from ..config import EmbedderConfig
from ..hookspecs import hookimpl


@click.group("config")
def config_group() -> None:
    """Inspect configuration."""


@config_group.command("show")
@click.pass_context
@handle_errors
def config_show(ctx: click.Context) -> None:
    """Print the effective configuration (file + --set overrides) as YAML."""
    cfg = get_state(ctx).config()
    click.echo(f"# source: {cfg.source or 'defaults'}")
    active = resolve_embedder_name(cfg.embedder)
    click.echo(f"# active embedder: {active}{_why(cfg.embedder, active)}")
    click.echo(cfg.to_yaml(mask_secrets=True), nl=False)


def _why(cfg: EmbedderConfig, active: str) -> str:
    """What ``auto`` resolved to and why: the fused signals, or the reason SSCD is left out."""
    if cfg.name != "auto":
        return ""
    if active == "fused":
        return f" ({' + '.join(cfg.signals)})"
    if cfg.projection == "none":
        return " (projection none: the raw latent alone)"
    return f" (SSCD unavailable: {(sscd_available(cfg) or '').splitlines()[0]})"


@hookimpl
def id2_register_commands(cli: click.Group) -> None:
    cli.add_command(config_group)
