"""ThreatExchange adapter: conformance, the FAISS index and its pickle-free format, the real CLI end to end."""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from id2_plugin.adapters import _jsoncodec
from id2_plugin.adapters._shared import decode_vector, encode_vector
from id2_plugin.adapters.threatexchange import (
    TX_MANIFEST,
    ID2PhotoIndex,
    ID2PhotoSignal,
    ID2VideoIndex,
    ID2VideoSignal,
    format_video_signal,
)
from id2_plugin.testing import check_signal_type

ROOT = Path(__file__).resolve().parents[2]


def _unit(rng: np.random.Generator, n: int, dim: int = 64) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _near(v: np.ndarray, cos: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector at cosine ``cos`` from unit vector ``v``."""
    r = rng.standard_normal(v.shape).astype(np.float32)
    r -= (r @ v) * v
    r /= np.linalg.norm(r)
    return cos * v + np.sqrt(1 - cos**2) * r


@pytest.fixture()
def configured(embedder_256):
    ID2PhotoSignal.configure(embedder=embedder_256, cosine_threshold=0.5)
    yield embedder_256
    ID2PhotoSignal.reset_configuration()


def test_importing_the_adapters_loads_no_model() -> None:
    code = (
        "import sys, id2_plugin.adapters.threatexchange, id2_plugin.adapters.perception, id2_plugin.adapters.http\n"
        "import id2_plugin.adapters.threatexchange as tx\n"
        "assert tx.TX_MANIFEST.signal_types\n"
        "heavy = [m for m in ('torch', 'diffusers', 'faiss', 'av') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_photo_signal_conformance_on_real_photos(configured, photo_paths, edited_copies) -> None:
    orig, other = photo_paths[0], photo_paths[1]
    check_signal_type(
        ID2PhotoSignal,
        matching_files=[(orig, edited_copies[orig])],
        non_matching_files=[(orig, other), (edited_copies[orig], other)],
    )
    examples = ID2PhotoSignal.get_examples()
    assert len(examples) == 3 and all(len(decode_vector(e)) == configured.dim for e in examples)
    assert ID2PhotoSignal.hash_from_bytes(b"not an image") == ""
    assert ID2PhotoSignal.hash_from_file(Path("/nonexistent.jpg")) == ""


def test_video_signal_conformance_on_real_videos(small_embedder, photo_paths, edited_copies, make_video, make_frame,
                                                 tmp_path: Path) -> None:
    # The 64 px raw-latent embedder: videos cost one forward pass per keyframe.
    ID2VideoSignal.configure(embedder=small_embedder, cosine_threshold=0.5)
    try:
        _video_conformance(photo_paths, edited_copies, make_video, make_frame, tmp_path)
    finally:
        ID2VideoSignal.reset_configuration()


def _video_conformance(photo_paths, edited_copies, make_video, make_frame, tmp_path: Path) -> None:
    a, b, c = photo_paths[2], photo_paths[3], photo_paths[4]
    original = make_video(tmp_path / "original.mp4", [make_frame(a), make_frame(b)])
    # The re-upload shows an edited copy of the second shot, then something unrelated.
    edited = make_video(tmp_path / "reupload.mp4", [make_frame(edited_copies[b]), make_frame(c)])
    unrelated = make_video(tmp_path / "unrelated.mp4", [make_frame(photo_paths[5]), make_frame(photo_paths[6])])
    check_signal_type(ID2VideoSignal, matching_files=[(original, edited)], non_matching_files=[(original, unrelated)])
    signal = json.loads(ID2VideoSignal.hash_from_file(original))
    assert [row[:2] for row in signal["frames"]] == [[0.0, 0], [2.0, 8]]  # one entry per keyframe
    assert ID2VideoSignal.hash_from_file(tmp_path / "missing.mp4") == ""


def test_hash_string_codec_and_validation(rng) -> None:
    v = _unit(rng, 1, 512)[0]
    h = encode_vector(v)
    assert len(h) == 4 * 512 and re.fullmatch(r"[0-9a-f]+", h)
    assert float(decode_vector(h) @ v) > 0.9999
    assert ID2PhotoSignal.validate_signal_str(" " + h.upper() + "\n") == h
    for bad in ("", "xyz", h[:-1], encode_vector(v * 0.5), "00" * 8, encode_vector(v)[:12]):
        with pytest.raises(ValueError):
            ID2PhotoSignal.validate_signal_str(bad)
    other = encode_vector(_unit(rng, 1, 256)[0])
    with pytest.raises(ValueError, match="different dimensions"):
        ID2PhotoSignal.compare_hash(h, other)


def test_compare_hash_distance_and_threshold(rng) -> None:
    v = _unit(rng, 1)[0]
    try:
        ID2PhotoSignal.configure(cosine_threshold=0.8)
        close, far = encode_vector(_near(v, 0.85, rng)), encode_vector(_near(v, 0.7, rng))
        res = ID2PhotoSignal.compare_hash(encode_vector(v), close)
        assert res.match and res.distance.distance == pytest.approx(0.15, abs=2e-3)
        assert not ID2PhotoSignal.compare_hash(encode_vector(v), far).match
        assert ID2PhotoSignal.compare_hash(encode_vector(v), encode_vector(v)).distance.distance == 0.0
    finally:
        ID2PhotoSignal.reset_configuration()


def test_index_ranks_dedupes_and_respects_the_threshold(rng) -> None:
    refs = _unit(rng, 50)
    hashes = [encode_vector(v) for v in refs]
    idx = ID2PhotoIndex.build([(h, i) for i, h in enumerate(hashes)])
    idx.add(hashes[7], "seven again")  # same signal: one vector, both entries
    assert len(idx) == 50 and idx.dim == 64
    q = _near(refs[7], 0.9, rng)
    matches = idx.query(encode_vector(q))
    assert [m.metadata for m in matches] == [7, "seven again"]
    assert matches[0].similarity_info.distance == pytest.approx(0.1, abs=2e-3)
    # Two references near the query: both returned, closest first; the index threshold is a cosine of 0.5.
    both = refs[1] + refs[2]  # cosine ~0.71 to each
    got = idx.query(encode_vector(both / np.linalg.norm(both)))
    assert {m.metadata for m in got} == {1, 2}
    dists = [m.similarity_info.distance for m in got]
    assert dists == sorted(dists) and all(d <= idx.threshold for d in dists)
    assert idx.query(encode_vector(_unit(rng, 1)[0])) == []  # random direction: nowhere near
    with pytest.raises(ValueError, match="64-dim"):
        idx.add(encode_vector(_unit(rng, 1, 32)[0]), "wrong dim")
    assert ID2PhotoIndex().query(hashes[0]) == []


def test_index_serialises_without_pickle_with_cli_style_entries(rng) -> None:
    from threatexchange.exchanges.fetch_state import FetchedSignalMetadata, SignalOpinion, SignalOpinionCategory

    opinion = SignalOpinion(False, SignalOpinionCategory.POSITIVE_CLASS, {"b", "a"})
    hashes = [encode_vector(v) for v in _unit(rng, 5)]
    entries = [(h, [("collab", FetchedSignalMetadata()), ("other", opinion)]) for h in hashes]
    idx = ID2PhotoIndex.build(entries)
    buf = io.BytesIO()
    idx.serialize(buf)
    blob = buf.getvalue()
    assert blob.startswith(b"ID2TXIX\x01")
    restored = ID2PhotoIndex.deserialize(io.BytesIO(blob))
    for h, meta in entries:
        assert [m.metadata for m in restored.query(h)] == [meta]
    assert restored.query(hashes[0])[0].metadata[1][1].tags == {"a", "b"}
    with pytest.raises(ValueError, match="bad magic"):
        ID2PhotoIndex.deserialize(io.BytesIO(pickle.dumps(idx.__dict__.get("_slots"))))
    with pytest.raises(ValueError, match="truncated"):
        ID2PhotoIndex.deserialize(io.BytesIO(blob[:-10]))
    with pytest.raises(ValueError, match="id2_video"):
        buf2 = io.BytesIO()
        idx.serialize(buf2)
        ID2VideoIndex.deserialize(io.BytesIO(buf2.getvalue()))
    empty = io.BytesIO()
    ID2PhotoIndex().serialize(empty)
    assert ID2PhotoIndex.deserialize(io.BytesIO(empty.getvalue())).query(hashes[0]) == []


def test_video_index_matches_on_the_best_keyframe_pair(rng) -> None:
    a, b, c = _unit(rng, 3)
    ref = format_video_signal([(0.0, 0, a), (2.0, 48, b)])
    other = format_video_signal([(0.0, 0, c)])
    idx = ID2VideoIndex.build([(ref, "ref"), (other, "other")])
    query = format_video_signal([(0.0, 0, _unit(rng, 1)[0]), (5.0, 120, _near(b, 0.9, rng))])
    got = idx.query(query)
    assert [m.metadata for m in got] == ["ref"]
    assert got[0].similarity_info.distance == pytest.approx(0.1, abs=2e-3)
    assert ID2VideoSignal.compare_hash(ref, query).match
    assert ID2VideoSignal.validate_signal_str(json.dumps(json.loads(ref), indent=2)) == ref
    with pytest.raises(ValueError):
        ID2VideoSignal.validate_signal_str('{"id2_video": 1, "frames": []}')


def test_json_codec_refuses_what_pickle_would_run() -> None:
    from threatexchange.exchanges.fetch_state import SignalOpinion, SignalOpinionCategory

    value = {"a": (1, 2.5, None), 3: frozenset({"x"}), "op": SignalOpinion(True, SignalOpinionCategory.NEGATIVE_CLASS, set())}
    assert _jsoncodec.loads(_jsoncodec.dumps(value)) == value
    with pytest.raises(ValueError, match="not a dataclass"):
        _jsoncodec.decode({"__id2__": "dataclass", "cls": "subprocess:Popen", "f": {}})
    with pytest.raises(ValueError, match="not an Enum"):
        _jsoncodec.decode({"__id2__": "enum", "cls": "subprocess:Popen", "v": "echo"})
    with pytest.raises(ValueError, match="not a class"):
        _jsoncodec.decode({"__id2__": "dataclass", "cls": "os:system", "f": {}})
    with pytest.raises(TypeError, match="cannot serialise"):
        _jsoncodec.dumps(object())


def test_manifest_lists_both_signals() -> None:
    names = {s.get_name() for s in TX_MANIFEST.signal_types}
    assert names == {"id2", "id2_video"}
    TX_MANIFEST.verify()


def _tx(args: list[str], home: Path) -> str:
    env = dict(os.environ, HOME=str(home))
    env.pop("ID2_CONFIG", None)
    proc = subprocess.run([sys.executable, "-m", "threatexchange.cli.main", *args], env=env, cwd=home,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"threatexchange {' '.join(args[:3])} failed:\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.slow
def test_threatexchange_cli_hash_fetch_match(tmp_path: Path, photo_paths, edited_copies) -> None:
    """The real ``threatexchange`` CLI: add the extension, hash originals, load them as a local collab, match."""
    home = tmp_path / "home"
    home.mkdir()
    out = _tx(["config", "extensions", "add", "id2_plugin.adapters.threatexchange"], home)
    assert "id2 - ID2PhotoSignal" in out and "id2_video - ID2VideoSignal" in out
    assert "id2_plugin.adapters.threatexchange" in _tx(["config", "extensions", "list"], home)

    originals = photo_paths[:4]
    queries = [edited_copies[p] for p in originals[:3]] + [photo_paths[30]]  # 3 edited copies + 1 unrelated
    lines = _tx(["hash", "-S", "id2", "photo", *map(str, originals + queries)], home).splitlines()
    hashes = [line.split(" ", 1)[1] for line in lines if line.startswith("id2 ")]
    assert len(hashes) == len(originals) + len(queries)
    ref_hashes, query_hashes = hashes[: len(originals)], hashes[len(originals) :]
    # The CLI subprocess and this process agree on the hash of a file (same embedder, deterministic).
    assert ID2PhotoSignal.validate_signal_str(ref_hashes[0]) == ref_hashes[0]

    signals = home / "refs.txt"
    signals.write_text("".join(f"id2 {h}\n" for h in ref_hashes))
    _tx(["config", "collab", "edit", "local_file", "--create", "--filename", str(signals), "id2-refs"], home)
    _tx(["fetch"], home)
    assert (home / ".threatexchange" / "index" / "id2.index").is_file()
    summary = _tx(["dataset", "--signal-summary"], home)
    assert re.search(r"id2\D+4", summary), summary

    matched = _tx(["match", "-S", "id2", "--all", "photo", *map(str, queries)], home).splitlines()
    # One line per edited copy (its own original is the only reference within the threshold), none for
    # the unrelated photo; lines come in query order: "id2 <distance> (id2-refs) <opinion>".
    expected = []
    for q in query_hashes:
        dists = [ID2PhotoSignal.compare_hash(r, q) for r in ref_hashes]
        expected.append([(i, d.distance.distance) for i, d in enumerate(dists) if d.match])
    assert [len(e) for e in expected] == [1, 1, 1, 0]
    assert [e[0][0] for e in expected[:3]] == [0, 1, 2]  # each copy matches its own original only
    assert len(matched) == 3, matched
    for line, exp in zip(matched, expected):
        name, dist, collab, *_ = line.split()
        assert name == "id2" and collab == "(id2-refs)"
        assert float(dist) == pytest.approx(exp[0][1], abs=1e-6)
