"""Example: adding the ID2 signal type to OpenMediaMatch (Hasher-Matcher-Actioner 2.0).

OMM does not read ``TX_MANIFEST``; it takes the signal types listed in its ``omm_config.py``. Copy the
block between the markers into your OMM config (OMM itself is not a dependency of id2-plugin)::

    # --- omm_config.py ---------------------------------------------------------------------------
    from threatexchange.signal_type.pdq.signal import PdqSignal
    from threatexchange.signal_type.md5 import VideoMD5Signal
    from id2_plugin.adapters.threatexchange import ID2PhotoSignal, ID2VideoSignal
    from OpenMediaMatch.storage.postgres.impl import DefaultOMMStore

    STORAGE_IFACE_INSTANCE = DefaultOMMStore(
        signal_types=[PdqSignal, VideoMD5Signal, ID2PhotoSignal, ID2VideoSignal],
    )
    # Optional: the cosine threshold for a match (else match.threshold from $ID2_CONFIG / ./id2.yaml).
    ID2PhotoSignal.configure(cosine_threshold=0.5)
    # ------------------------------------------------------------------------------------------------

Every OMM worker process loads the model on its first hash (never at import). The index OMM builds and
stores is :class:`~id2_plugin.adapters.threatexchange.ID2PhotoIndex` (FAISS, serialised without pickle).

Running this file does what OMM does with a signal type, without OMM: hash bank content, build the index
with integer content ids, serialise it to bytes (OMM keeps them in Postgres), load it in a "matcher", and
match edited uploads: ``python examples/openmediamatch_config.py [--photos 6]``.
"""

from __future__ import annotations

import argparse
import io

from id2_plugin.adapters.threatexchange import ID2PhotoIndex, ID2PhotoSignal, index_to_bytes
from id2_plugin.testing import reupload_jpeg

from _common import shared_photos


def main() -> None:
    ap = argparse.ArgumentParser(description="Simulate OMM's use of the id2 signal type.")
    ap.add_argument("--photos", type=int, default=6)
    args = ap.parse_args()
    photos = shared_photos(args.photos + 1)
    bank, unrelated = photos[:-1], photos[-1]

    # Hasher: bank content -> signals, stored with OMM-style integer content ids.
    signals = [(ID2PhotoSignal.hash_from_file(p), content_id) for content_id, p in enumerate(bank, start=100)]
    # Index builder: build and serialise (OMM stores the bytes and ships them to matchers).
    blob = index_to_bytes(ID2PhotoIndex.build(signals))
    print(f"index of {len(signals)} signals: {len(blob)} bytes")
    # Matcher: load the index, hash uploads, look them up.
    index = ID2PhotoIndex.deserialize(io.BytesIO(blob))
    for name, data in [(f"{p.name} (edited)", reupload_jpeg(p)) for p in bank] + [(unrelated.name, unrelated.read_bytes())]:
        matches = index.query(ID2PhotoSignal.hash_from_bytes(data))
        found = ", ".join(f"content {m.metadata} at distance {m.similarity_info.pretty_str()}" for m in matches)
        print(f"{name}: {found or 'no match'}")


if __name__ == "__main__":
    main()
