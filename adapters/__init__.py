"""Adapters that run id2-plugin inside real host pipelines.

* :mod:`id2_plugin.adapters.threatexchange` — ThreatExchange / Hasher-Matcher-Actioner signal types
  (photo and video) with a FAISS-backed ``SignalTypeIndex``; ``TX_MANIFEST`` for
  ``threatexchange config extensions add id2_plugin.adapters.threatexchange``.
* :mod:`id2_plugin.adapters.perception` — Thorn ``perception`` image and frame-wise video hashers, usable in
  perception's own benchmarking.
* :mod:`id2_plugin.adapters.http` — a FastAPI service (``id2-plugin serve``).

Importing this package (or any adapter module) never loads a model: the embedder is built on first use,
once per process (:func:`id2_plugin.adapters._shared.get_embedder`). Each adapter imports its host package,
so import only the adapter whose host is installed.
"""

from __future__ import annotations

__all__: list[str] = []
