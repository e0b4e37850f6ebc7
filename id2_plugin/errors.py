"""Typed errors raised by id2-plugin. Hosts catch :class:`Id2Error` to handle them all."""

from __future__ import annotations


class Id2Error(Exception):
    """Base class of every error this package raises on purpose."""


class MediaError(Id2Error):
    """The input could not be turned into an RGB image (unreadable, truncated, too large, not an image)."""

    def __init__(self, message: str, source: str | None = None) -> None:
        self.source = source
        super().__init__(f"{source}: {message}" if source else message)


class ConfigError(Id2Error):
    """The configuration is invalid; the message names the offending key."""


class StoreError(Id2Error):
    """The reference store is missing, locked, corrupt or incompatible with the embedder."""


class StoreDamagedError(StoreError):
    """A store file is shorter than its committed metadata says (truncated / missing): nothing is written."""


class IncompatibleStoreError(StoreError):
    """The store was built with a different embedder / projection than the one used to query it."""


class MissingExtraError(Id2Error, ImportError):
    """An optional dependency is not installed; the message names the extra that provides it."""


class ModelNotFoundError(Id2Error, FileNotFoundError):
    """Model weights could not be located locally nor downloaded."""
