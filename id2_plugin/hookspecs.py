"""Hook specifications: the contract between id2-plugin, its built-in parts and third-party plugins.

A plugin is a module or object with functions marked ``@id2_plugin.hookimpl`` and named like the specs
below. Built-in embedders, stores, attacks and commands register through these same hooks
(see :data:`id2_plugin.plugins.DEFAULT_PLUGINS`); third-party plugins are found through the
``id2_plugin`` entry-point group.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Union

import pluggy

from .specs import EmbedderSpec, StoreSpec

if TYPE_CHECKING:
    import click

    from .embedders.base import ImageEmbedder, LatentEncoder
    from .identify_context import IdentifyContext
    from .robustness.attacks import Attack
    from .stores.base import ReferenceStore
    from .types import OriginReport

PROJECT_NAME = "id2_plugin"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
#: The one marker for hook implementations, built-in and third-party (re-exported as ``id2_plugin.hookimpl``).
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

#: builds one signal from its spec: a VAE encoder (given the configured W) or a whole image embedder
EmbedderFactory = Callable[[EmbedderSpec], Union["LatentEncoder", "ImageEmbedder"]]
#: opens or creates one store from its spec
StoreFactory = Callable[[StoreSpec], "ReferenceStore"]
#: builds one attack at an intensity in [0, 1]
AttackFactory = Callable[[float], "Attack"]


@hookspec
def id2_register_embedders(register: Callable[[str, EmbedderFactory], None]) -> None:
    """Register signals by name: what users put in ``embedder.name``, ``embedder.vae`` or ``embedder.signals``.

    Call ``register("my-signal", factory)``. ``factory(spec)`` gets one frozen
    :class:`id2_plugin.specs.EmbedderSpec` (weights, input size, batch size, device, dtype, precision,
    runtime, resize policy, media limits, hub subfolder), reads what its model needs, and returns either

    * an :class:`id2_plugin.LatentEncoder` (a VAE): it becomes the ``id2`` signal with the configured W, or
    * an :class:`id2_plugin.embedders.ImageEmbedder` whose ``name`` is the registered name (like the built-in
      ``sscd``): used alone, or joining the fused embedder when listed in ``embedder.signals`` with a weight
      in ``embedder.fusion``.

    A value the factory cannot honour (``precision: int8`` without an int8 model, a ``device`` it cannot run
    on) is a :class:`id2_plugin.ConfigError` it raises itself, naming the key.
    """


@hookspec
def id2_register_stores(register: Callable[[str, StoreFactory], None]) -> None:
    """Register reference-store backends by name (what users put in ``store.backend``).

    Call ``register("my-backend", factory)``. ``factory(spec)`` gets one frozen
    :class:`id2_plugin.specs.StoreSpec` (location, embedder identity, dimension, index type and options,
    create, collection, API key) and returns a store meeting :class:`id2_plugin.StoreBackend` (deriving from
    :class:`id2_plugin.ReferenceStore` supplies its boilerplate). A backend ignores the fields it has no use
    for, and raises :class:`id2_plugin.StoreError` when the store is missing (``spec.create`` false) or
    unusable.
    """


@hookspec
def id2_register_attacks(register: Callable[[str, AttackFactory], None]) -> None:
    """Register robustness attacks by name.

    Call ``register("my-attack", factory)``; ``factory(intensity)`` must return an
    :class:`id2_plugin.robustness.Attack` (an RGB-array -> RGB-array callable with a name and intensity).
    """


@hookspec
def id2_register_commands(cli: click.Group) -> None:
    """Add click commands or groups to the ``id2-plugin`` command line (``cli.add_command(...)``).

    To add a subcommand to a group another feature owns (``index``), attach it to the shared group in
    :mod:`id2_plugin.cli_support` (``index_group.add_command(...)``), never to another plugin's module.
    """


@hookspec(firstresult=True)
def id2_identify_origin(media: Any, context: IdentifyContext) -> OriginReport | None:
    """Find the reference that ``media`` is an edited or degraded version of.

    ``media`` is anything the media normaliser accepts (path, bytes, file object, PIL image, array);
    ``context`` carries the embedder, the reference store, ``k`` and the decision threshold. The first
    non-``None`` report wins; the built-in implementation runs last, so a plugin may pre-empt it (e.g. an
    exact-hash fast path) or return ``None`` to defer.

    Batches (``Pipeline.identify_many`` / ``identify_iter``, the HTTP batch route, ``query`` on many files):
    while the built-in search is the only implementation, queries skip the hook and go to that search in
    pipelined batches (the same reports, decoded and embedded together); as soon as any other plugin
    implements this hook, every query of a batch calls it, one by one, in order. Video keyframes and
    ``calibrate`` query the store directly and never call it.
    """
