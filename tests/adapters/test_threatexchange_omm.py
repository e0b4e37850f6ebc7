"""The id2 index as OpenMediaMatch (HMA 2.0) handles it: stored, then loaded by threatexchange's base loader.

OMM writes an index with ``index.serialize(f)`` and reads every stored index back with the base
``SignalTypeIndex.deserialize`` (a plain unpickle), whatever the signal type; these tests call exactly that
function, never the subclass. Also: the threshold is read at match time, and ``warm_up`` / the thread cap.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from threatexchange.signal_type.index import SignalTypeIndex

from id2_plugin.adapters._shared import encode_vector
from id2_plugin.adapters.threatexchange.index import ID2PhotoIndex, ID2VideoIndex, index_to_bytes
from id2_plugin.adapters.threatexchange.signal import ID2PhotoSignal
from id2_plugin.testing import centre_crop_jpeg


@pytest.fixture()
def small(small_embedder):
    ID2PhotoSignal.configure(embedder=small_embedder, cosine_threshold=0.5)
    yield ID2PhotoSignal.embedder()
    ID2PhotoSignal.reset_configuration()


def _omm_round_trip(idx: ID2PhotoIndex) -> object:
    """What OMM does between its index builder and its matcher: serialize, store the bytes, base-class load."""
    stored = io.BytesIO()
    idx.serialize(stored)
    return SignalTypeIndex.deserialize(io.BytesIO(stored.getvalue()))


def test_openmediamatch_loader_restores_the_index_and_crops_match(small, photo_paths) -> None:
    bank = photo_paths[40:48]
    signals = [(ID2PhotoSignal.hash_from_file(p), content_id) for content_id, p in enumerate(bank, start=1000)]
    loaded = _omm_round_trip(ID2PhotoIndex.build(signals))
    assert isinstance(loaded, ID2PhotoIndex) and len(loaded) == len(bank)
    assert loaded.digest == ID2PhotoSignal.identity_digest()
    for content_id, p in enumerate(bank, start=1000):
        found = loaded.query(ID2PhotoSignal.hash_from_bytes(centre_crop_jpeg(p)))
        assert [m.metadata for m in found][:1] == [content_id], p.name


def test_the_pickle_references_only_the_adapters_restore_function(small, photo_paths) -> None:
    from threatexchange.exchanges.fetch_state import FetchedSignalMetadata, SignalOpinion, SignalOpinionCategory

    opinion = SignalOpinion(False, SignalOpinionCategory.POSITIVE_CLASS, {"b", "a"})
    sigs = [ID2PhotoSignal.hash_from_file(p) for p in photo_paths[:3]]
    # The threatexchange CLI's entries: dataclasses and enums, kept in the adapter's JSON, not in the pickle.
    idx = ID2PhotoIndex.build([(s, [("collab", FetchedSignalMetadata()), ("other", opinion)]) for s in sigs])
    blob = index_to_bytes(idx)
    seen: list[tuple[str, str]] = []

    class Recording(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> object:
            seen.append((module, name))
            return super().find_class(module, name)

    restored = Recording(io.BytesIO(blob)).load()
    assert seen == [("id2_plugin.adapters.threatexchange.index", "_restore_index")]
    assert restored.query(sigs[0])[0].metadata[1][1].tags == {"a", "b"}
    assert [m.metadata for m in pickle.loads(pickle.dumps(idx)).query(sigs[2])][:1] == [idx.query(sigs[2])[0].metadata]
    empty = _omm_round_trip(ID2PhotoIndex())
    assert isinstance(empty, ID2PhotoIndex) and empty.query(sigs[0]) == []


class _Evil:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.mkdir, (str(self.path),)


class _Wrapped:
    """A pickle that calls the adapter's restore function on bytes of our choosing."""

    def __init__(self, blob: bytes) -> None:
        self.blob = blob

    def __reduce__(self) -> tuple[object, tuple[bytes]]:
        from id2_plugin.adapters.threatexchange.index import _restore_index

        return _restore_index, (self.blob,)


def test_loading_refuses_foreign_pickles_and_invalid_bytes(small, photo_paths, tmp_path: Path) -> None:
    sig = ID2PhotoSignal.hash_from_file(photo_paths[0])
    blob = index_to_bytes(ID2PhotoIndex.build([(sig, 1)]))
    target = tmp_path / "created-by-the-pickle"
    with pytest.raises(ValueError, match="refusing posix.mkdir|refusing os.mkdir"):
        ID2PhotoIndex.deserialize(io.BytesIO(pickle.dumps(_Evil(target))))
    assert not target.exists()
    raw = pickle.loads(blob).__reduce__()[1][0]  # the adapter's own bytes
    # Through the base loader too, the rebuild validates the bytes it is given.
    with pytest.raises(ValueError, match="truncated"):
        SignalTypeIndex.deserialize(io.BytesIO(pickle.dumps(_Wrapped(raw[:-10]))))
    with pytest.raises(ValueError, match="rebuild it"):
        SignalTypeIndex.deserialize(io.BytesIO(pickle.dumps(_Wrapped(b"ID2TXIX\x01" + raw[8:]))))
    with pytest.raises(ValueError, match="ID2VideoIndex"):
        ID2VideoIndex.deserialize(io.BytesIO(blob))
    # Bytes written directly (no pickle) still load through the subclass.
    assert [m.metadata for m in ID2PhotoIndex.deserialize(io.BytesIO(raw)).query(sig)] == [1]


def test_threshold_is_read_at_match_time_not_frozen_in_the_stored_index(
    small, photo_paths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref, query = photo_paths[0], centre_crop_jpeg(photo_paths[0])
    loaded = _omm_round_trip(ID2PhotoIndex.build([(ID2PhotoSignal.hash_from_file(ref), 7)]))
    q = ID2PhotoSignal.hash_from_bytes(query)
    dist = loaded.query(q)[0].similarity_info.distance
    cos = 1.0 - dist
    ID2PhotoSignal.configure(cosine_threshold=min(1.0, cos + 0.01))
    assert loaded.query(q) == [] and ID2PhotoSignal.threshold_source() == "configure()"
    fixed = ID2PhotoIndex(threshold=dist)  # an explicit, fixed threshold stays possible
    fixed.add(ID2PhotoSignal.hash_from_file(ref), 7)
    assert [m.metadata for m in fixed.query(q)] == [7]

    # From ./id2.yaml in the worker's cwd (no configure(), no $ID2_CONFIG), re-read when the file changes.
    ID2PhotoSignal.reset_configuration()
    ID2PhotoSignal.configure(embedder=small.embedder)
    monkeypatch.delenv("ID2_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "id2.yaml"
    cfg.write_text(f"match:\n  threshold: {cos - 0.01:.6f}\n")
    os.utime(cfg, ns=(1_000_000_000, 1_000_000_000))
    assert [m.metadata for m in loaded.query(q)] == [7]
    assert ID2PhotoSignal.threshold_source() == str(cfg.resolve())
    cfg.write_text(f"match:\n  threshold: {cos + 0.01:.6f}\n")
    os.utime(cfg, ns=(2_000_000_000, 2_000_000_000))
    assert loaded.query(q) == []
    assert ID2PhotoSignal.distance_threshold() == pytest.approx(1.0 - (cos + 0.01), abs=1e-6)


def test_warm_up_loads_the_model_with_the_thread_cap(shared_dir: Path, photo_paths, tmp_path: Path) -> None:
    cfg = tmp_path / "omm-id2.yaml"
    cfg.write_text(
        "embedder:\n  name: taef2\n  input_size: 64\n  projection: none\n  allow_raw_latent: true\n  device: cpu\n"
        "match:\n  threshold: 0.61\n"
    )
    code = (
        "import json, sys\n"
        "from id2_plugin.adapters.threatexchange.signal import ID2PhotoSignal\n"
        "from id2_plugin.adapters.threatexchange.warmup import warm_up\n"
        f"ID2PhotoSignal.configure(config={str(cfg)!r})\n"
        "info = warm_up()\n"
        f"info['hash'] = ID2PhotoSignal.hash_from_file({str(photo_paths[0])!r})\n"
        "print(json.dumps(info))\n"
    )
    env = dict(os.environ, ID2_THREADS="1")
    env.pop("ID2_CONFIG", None)
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600, check=True
    )
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["torch_threads"] == 1 and info["dim"] == 2048
    assert info["cosine_threshold"] == pytest.approx(0.61) and info["threshold_source"] == str(cfg.resolve())
    assert info["hash"].startswith(f"id2:2:{info['digest']}:")


def test_upgraded_legacy_bank_loads_through_the_base_loader(small, photo_paths) -> None:
    """The documented upgrade path for a bank of bare-hex hashes known to come from the embedder in use."""
    legacy = [encode_vector(v) for v in small.embed(photo_paths[:3])]
    skipped = ID2PhotoIndex.build([(h, i) for i, h in enumerate(legacy)])
    assert len(skipped) == 0 and skipped.skipped["unversioned"] == 3
    upgraded = [ID2PhotoSignal.upgrade_legacy_signal(h) for h in legacy]
    loaded = _omm_round_trip(ID2PhotoIndex.build([(h, i) for i, h in enumerate(upgraded)]))
    for i, p in enumerate(photo_paths[:3]):
        assert [m.metadata for m in loaded.query(ID2PhotoSignal.hash_from_file(p))][:1] == [i]
    assert np.isfinite([m.similarity_info.distance for m in loaded.query(upgraded[0])]).all()


def test_configure_refuses_bad_settings_at_start_up(tmp_path: Path) -> None:
    """Errors belong in the host's start-up (omm_config.py), not in its first match."""
    from id2_plugin.errors import ConfigError

    with pytest.raises(ValueError, match="threads=0"):
        ID2PhotoSignal.configure(threads=0)
    with pytest.raises(ValueError, match="cosine_threshold=1.5"):
        ID2PhotoSignal.configure(cosine_threshold=1.5)
    with pytest.raises(ConfigError, match="cannot read config file"):
        ID2PhotoSignal.configure(config=tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("match:\n  threshold: 7\n")
    with pytest.raises(ConfigError, match="match.threshold"):
        ID2PhotoSignal.configure(config=tmp_path / "bad.yaml")
    assert ID2PhotoSignal.threshold_source() != str(tmp_path / "bad.yaml")


def test_the_omm_example_names_what_to_set_when_the_photos_are_absent(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "openmediamatch_config.py"
    env = dict(os.environ, ID2_SHARED_DIR=str(tmp_path))
    run = subprocess.run([sys.executable, str(example)], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith("error: ") and "ID2_SHARED_DIR" in run.stderr and "Traceback" not in run.stderr


_OMM_LOGGING = """
import logging.config, sys
from id2_plugin.adapters.threatexchange.signal import ID2PhotoSignal
from id2_plugin.adapters.threatexchange.warmup import warm_up
ID2PhotoSignal.configure(config=sys.argv[1])
logging.config.dictConfig({"version": 1, %s
    "handlers": {"h": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr"}},
    "root": {"level": "INFO", "handlers": ["h"]}})
warm_up(None)
"""


def test_omm_style_logging_shows_the_warm_up_line_only_with_existing_loggers_kept(tmp_path: Path) -> None:
    """What the README tells OMM operators: dictConfig after the adapter's import silences it unless
    ``disable_existing_loggers`` is False."""
    config = tmp_path / "id2.yaml"
    config.write_text("embedder:\n  input_size: 64\n  device: cpu\n  projection: none\n  allow_raw_latent: true\n")
    shown = {}
    for keep in (False, True):
        code = _OMM_LOGGING % ('"disable_existing_loggers": False,' if keep else "")
        run = subprocess.run([sys.executable, "-c", code, str(config)], capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        shown[keep] = "id2 ready" in run.stderr
    assert shown == {False: False, True: True}
