"""The plugin manager: built-in plugins, entry-point discovery and the registries they fill."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any

import pluggy

from . import hookspecs
from .errors import ConfigError

#: Modules with the built-in hook implementations; they register exactly as a third-party plugin would.
DEFAULT_PLUGINS: tuple[str, ...] = (
    "id2_plugin.default_plugins.embedders",
    "id2_plugin.default_plugins.stores",
    "id2_plugin.default_plugins.identify",
    "id2_plugin.default_plugins.commands",
    "id2_plugin.adapters.commands",
    "id2_plugin.default_plugins.store_commands",
    "id2_plugin.robustness._plugin",
    "id2_plugin.default_plugins.video_commands",
    "id2_plugin.default_plugins.evaluate_commands",
    "id2_plugin.default_plugins.calibrate_commands",
    "id2_plugin.default_plugins.fusion_commands",
    "id2_plugin.default_plugins.decision_commands",
    "id2_plugin.default_plugins.explain_commands",
    "id2_plugin.default_plugins.ray_commands",
    "id2_plugin.default_plugins.cache_commands",
    "id2_plugin.train.cli",
)

ENTRY_POINT_GROUP = "id2_plugin"

_pm: pluggy.PluginManager | None = None


def _env_list(name: str) -> list[str]:
    return [s.strip() for s in os.environ.get(name, "").split(",") if s.strip()]


def get_plugin_manager() -> pluggy.PluginManager:
    """Return the process-wide plugin manager, creating it on first use.

    Loading is controlled by environment variables (read once, at creation):

    * ``ID2_LOAD_PLUGINS``: comma-separated entry-point names; when set, only these third-party plugins
      load (an empty value loads none). Unset: every installed plugin loads.
    * ``ID2_DISABLE_PLUGINS``: comma-separated names (entry-point names or built-in module names) to skip.
    """
    global _pm
    if _pm is not None:
        return _pm
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    disabled = set(_env_list("ID2_DISABLE_PLUGINS"))
    for modname in DEFAULT_PLUGINS:
        if modname in disabled or modname.rsplit(".", 1)[-1] in disabled:
            continue
        pm.register(importlib.import_module(modname), name=modname)
    load = os.environ.get("ID2_LOAD_PLUGINS")
    if load is None:
        for name in disabled:
            pm.set_blocked(name)
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    else:
        from importlib.metadata import entry_points

        wanted = set(_env_list("ID2_LOAD_PLUGINS")) - disabled
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in wanted and not pm.has_plugin(ep.name):
                pm.register(ep.load(), name=ep.name)
    _pm = pm
    return pm


def reset_plugin_manager() -> None:
    """Forget the process-wide manager (tests, or after changing the environment variables)."""
    global _pm
    _pm = None


def _collect(hook_name: str, kind: str) -> dict[str, Callable[..., Any]]:
    registry: dict[str, Callable[..., Any]] = {}

    def register(name: str, factory: Callable[..., Any]) -> None:
        if name in registry:
            raise ConfigError(f"two plugins register the {kind} {name!r}")
        registry[name] = factory

    getattr(get_plugin_manager().hook, hook_name)(register=register)
    return registry


def embedder_factories() -> dict[str, Callable[..., Any]]:
    """Name -> factory of every registered latent encoder."""
    return _collect("id2_register_embedders", "embedder")


def store_factories() -> dict[str, Callable[..., Any]]:
    """Name -> factory of every registered reference-store backend."""
    return _collect("id2_register_stores", "store")


def attack_factories() -> dict[str, Callable[..., Any]]:
    """Name -> factory of every registered robustness attack."""
    return _collect("id2_register_attacks", "attack")
