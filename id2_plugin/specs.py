"""Plugin contracts as objects: the one frozen spec a registered embedder or store factory receives.

:mod:`id2_plugin.assembly` builds a spec from the configuration; a factory reads the fields it needs and
raises :class:`~id2_plugin.errors.ConfigError` itself for a value it cannot honour (``precision: int8`` on an
encoder without an int8 model), so the message names that plugin's own limits. A new field is a new
attribute with a default: factories written before it keep working and never see an unknown keyword.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .media import MediaLimits, ResizePolicy


@dataclass(frozen=True)
class EmbedderSpec:
    """What a factory registered with ``id2_register_embedders`` builds one signal from (the ``embedder``
    config section, resolved for that signal)."""

    #: the registered name being built, e.g. ``taef2``, ``sscd`` or a plugin's
    name: str
    #: a weights file, folder or hub id (``embedder.weights``, ``embedder.sscd_weights`` for SSCD);
    #: None = the factory's default location
    weights: str | None = None
    #: side of the square RGB image the model takes
    input_size: int = 256
    #: images per forward pass
    batch_size: int = 16
    #: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``
    device: str = "auto"
    #: ``auto``, ``float32``, ``float16`` or ``bfloat16``
    dtype: str = "auto"
    #: ``fp32``, ``int8``, or ``auto`` (int8 where the factory has such a model, else fp32)
    precision: str = "fp32"
    #: what runs the model: ``torch``, ``onnxruntime`` or ``auto`` (the factory's choice)
    runtime: str = "auto"
    #: how media are made square: ``squash``, ``center_crop`` or ``pad``
    resize_policy: ResizePolicy = "squash"
    #: resource limits and framing applied while decoding untrusted media
    limits: MediaLimits = field(default_factory=MediaLimits)
    #: a subfolder inside ``weights`` (``embedder.subfolder``), for encoders loaded from a model hub
    subfolder: str | None = None


@dataclass(frozen=True)
class StoreSpec:
    """What a factory registered with ``id2_register_stores`` opens or creates a store from (the ``store``
    config section, plus what the caller knows of the embedder)."""

    #: ``store.url`` when set, else ``store.path``
    location: str
    #: the identity the store must have been built with; None = any (reading a store's summary)
    embedder_identity: str | None = None
    #: the vector dimension for a new store; None when only reading
    dim: int | None = None
    #: ``store.index``, e.g. ``flat``
    index: str = "flat"
    #: ``store.index_options`` (a copy: the factory may keep or change it)
    index_options: dict[str, Any] = field(default_factory=dict)
    #: create the store when it does not exist; else a missing store is a :class:`~id2_plugin.errors.StoreError`
    create: bool = False
    #: ``store.collection``: a namespace inside ``location``
    collection: str = "id2"
    #: ``store.api_key``, for remote backends
    api_key: str | None = None
