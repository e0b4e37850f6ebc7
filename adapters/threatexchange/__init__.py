"""The ThreatExchange extension's manifest, ``TX_MANIFEST``: what the ``threatexchange`` CLI loads.

ThreatExchange / Hasher-Matcher-Actioner signal types for ID2 embeddings (photo and video). Use from the
``threatexchange`` CLI::

    threatexchange config extensions add id2_plugin.adapters.threatexchange
    threatexchange hash photo original.jpg             # -> "id2 id2:2:<digest>:<payload>"
    threatexchange match photo suspected_edit.jpg      # -> "id2 0.1412 (collab) ..."

or list the classes in OpenMediaMatch's ``omm_config.py`` (OMM does not read ``TX_MANIFEST``; see
``examples/openmediamatch_config.py`` and ``docs/guides/omm-operator.md``)::

    STORAGE_IFACE_INSTANCE = DefaultOMMStore(signal_types=[PdqSignal, VideoMD5Signal, ID2PhotoSignal])

One concern per module, as in ThreatExchange's own ``signal_type/pdq/``:

* :mod:`~id2_plugin.adapters.threatexchange.signal` — the signal types ``ID2PhotoSignal`` and ``ID2VideoSignal``;
* :mod:`~id2_plugin.adapters.threatexchange.index` — their FAISS ``SignalTypeIndex`` and its stored format;
* :mod:`~id2_plugin.adapters.threatexchange.signal_format` — the versioned signal strings;
* :mod:`~id2_plugin.adapters.threatexchange.compare` — which signals may be compared, and their distance;
* :mod:`~id2_plugin.adapters.threatexchange.settings` — ``configure()``, the embedder, threshold, threads;
* :mod:`~id2_plugin.adapters.threatexchange.warmup` — ``warm_up()`` for the host's start-up hook;
* :mod:`~id2_plugin.adapters.threatexchange.entry_codec` — the pickle-free JSON of index entries.
"""

from __future__ import annotations

from threatexchange.extensions.manifest import ThreatExchangeExtensionManifest

from id2_plugin.extras import require

from .signal import ID2PhotoSignal, ID2VideoSignal

__all__ = ["TX_MANIFEST"]


class _ID2Manifest(ThreatExchangeExtensionManifest):
    """Manifest whose ``verify`` (run by ``config extensions add``) checks the runtime dependencies."""

    @classmethod
    def verify(cls) -> None:
        for module in ("torch", "faiss", "av"):
            require(module)


TX_MANIFEST = _ID2Manifest(signal_types=(ID2PhotoSignal, ID2VideoSignal))
