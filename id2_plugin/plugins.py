"""The plugin manager: built-in plugins, entry-point discovery and the registries they fill."""

from __future__ import annotations

import importlib
import os
from typing import Any

import pluggy

from . import hookspecs
from .errors import ConfigError
from .hookspecs import AttackFactory, EmbedderFactory, StoreFactory

#: Modules with the built-in hook implementations, one per feature; they register exactly as a third-party
#: plugin would, and ``ID2_DISABLE_PLUGINS`` names them by their last part (e.g. ``store_commands``).
DEFAULT_PLUGINS: tuple[str, ...] = (
    "id2_plugin.default_plugins.builtin_embedders",
    "id2_plugin.default_plugins.builtin_stores",
    "id2_plugin.default_plugins.builtin_search",
    "id2_plugin.default_plugins.index_commands",
    "id2_plugin.default_plugins.query_commands",
    "id2_plugin.default_plugins.config_commands",
    "id2_plugin.default_plugins.quantize_commands",
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
#: the built-in ``id2_identify_origin`` (the batched search); see :func:`builtin_search_only`
BUILTIN_SEARCH = "id2_plugin.default_plugins.builtin_search"

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


def _collect(hook_name: str, kind: str) -> dict[str, Any]:
    registry: dict[str, Any] = {}

    def register(name: str, factory: Any) -> None:
        if name in registry:
            raise ConfigError(f"two plugins register the {kind} {name!r}")
        registry[name] = factory

    getattr(get_plugin_manager().hook, hook_name)(register=register)
    return registry


def embedder_factories() -> dict[str, EmbedderFactory]:
    """Name -> factory of every registered signal (``factory(EmbedderSpec)``)."""
    return _collect("id2_register_embedders", "embedder")


def store_factories() -> dict[str, StoreFactory]:
    """Name -> factory of every registered reference-store backend (``factory(StoreSpec)``)."""
    return _collect("id2_register_stores", "store")


def attack_factories() -> dict[str, AttackFactory]:
    """Name -> factory of every registered robustness attack (``factory(intensity)``)."""
    return _collect("id2_register_attacks", "attack")


def builtin_search_only() -> bool:
    """True when the built-in search is the one ``id2_identify_origin`` implementation, so a batch of queries
    may run it directly, batched; any other implementation (or none) means the hook runs per query."""
    impls = get_plugin_manager().hook.id2_identify_origin.get_hookimpls()
    return [impl.plugin_name for impl in impls] == [BUILTIN_SEARCH]
