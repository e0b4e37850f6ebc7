"""Hook specifications: the contract between id2-plugin, its built-in parts and third-party plugins.

A plugin is a module or object with functions marked ``@id2_plugin.hookimpl`` and named like the specs
below. Built-in embedders, stores, attacks and commands register through these same hooks
(see :data:`id2_plugin.plugins.DEFAULT_PLUGINS`); third-party plugins are found through the
``id2_plugin`` entry-point group.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click

    from .search import IdentifyContext
    from .types import OriginReport

PROJECT_NAME = "id2_plugin"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
#: The one marker for hook implementations, built-in and third-party (re-exported as ``id2_plugin.hookimpl``).
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

#: ``register(name, factory)``: ``factory(**options)`` builds the component named ``name``.
Register = Callable[[str, Callable[..., Any]], None]


@hookspec
def id2_register_embedders(register: Register) -> None:
    """Register signals by name: latent encoders (a VAE, used with a W) or whole image embedders.

    Call ``register("my-vae", factory)``; ``factory(weights=..., input_size=..., batch_size=..., device=...,
    dtype=..., resize_policy=..., limits=...)`` (plus ``precision=`` ``int8`` or ``auto`` only when
    ``embedder.precision`` is not ``fp32``; a factory that does not take it makes that a clear config error)
    must return a :class:`id2_plugin.LatentEncoder` (wrapped with the configured W) or, like the built-in
    ``sscd``, an :class:`id2_plugin.embedders.ImageEmbedder`.
    The name is what users put in ``embedder.name`` (or ``embedder.vae`` for the fused embedder's latent).
    """


@hookspec
def id2_register_stores(register: Register) -> None:
    """Register reference-store backends by name (what users put in ``store.backend``).

    Call ``register("my-backend", factory)``. Every backend, built-in or not, is opened with the same
    keyword arguments, all of them always passed::

        factory(location=str,                 # store.url when set, else store.path
                embedder_identity=str | None,  # identity the store must have been built with; None = any
                dim=int | None,                # vector dimension for a new store; None when only reading
                index=str,                     # store.index, e.g. "flat"
                index_options=dict,            # store.index_options
                create=bool,                   # create the store when it does not exist
                collection=str,                # store.collection (a namespace inside ``location``)
                api_key=str | None)            # store.api_key for remote backends

    and must return a store meeting :class:`id2_plugin.StoreBackend` (deriving from
    :class:`id2_plugin.ReferenceStore` supplies its boilerplate). A backend ignores what it has no use for,
    and raises :class:`id2_plugin.StoreError` when the store is missing (``create=False``) or unusable.
    """


@hookspec
def id2_register_attacks(register: Register) -> None:
    """Register robustness attacks by name.

    Call ``register("my-attack", factory)``; ``factory(intensity)`` must return an
    :class:`id2_plugin.robustness.Attack` (an RGB-array -> RGB-array callable with a name and intensity).
    """


@hookspec
def id2_register_commands(cli: click.Group) -> None:
    """Add click commands or groups to the ``id2-plugin`` command line (``cli.add_command(...)``)."""


@hookspec(firstresult=True)
def id2_identify_origin(media: Any, context: IdentifyContext) -> OriginReport | None:
    """Find the reference that ``media`` is an edited or degraded version of.

    ``media`` is anything the media normaliser accepts (path, bytes, file object, PIL image, array);
    ``context`` carries the embedder, the reference store, ``k`` and the decision threshold. The first
    non-``None`` report wins; the built-in implementation runs last, so a plugin may pre-empt it (e.g. an
    exact-hash fast path) or return ``None`` to defer.
    """
