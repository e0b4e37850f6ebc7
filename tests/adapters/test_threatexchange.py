"""ThreatExchange adapter: versioned signals, identity checks, the FAISS index, the real CLI end to end.

OpenMediaMatch's loader path (the base ``SignalTypeIndex.deserialize``), the threshold and warm-up are in
``test_threatexchange_omm.py``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from id2_plugin.adapters._shared import encode_vector
from id2_plugin.adapters.threatexchange import TX_MANIFEST, entry_codec
from id2_plugin.adapters.threatexchange.compare import SignalIdentityError
from id2_plugin.adapters.threatexchange.index import ID2PhotoIndex, ID2VideoIndex
from id2_plugin.adapters.threatexchange.signal import (
    HashError,
    ID2PhotoSignal,
    ID2VideoSignal,
    format_video_signal,
    parse_video_signal,
)
from id2_plugin.testing import check_signal_type

ROOT = Path(__file__).resolve().parents[2]
#: gunicorn's default ``limit_request_line``: a GET route's whole request line must fit in it
GUNICORN_REQUEST_LINE = 4094


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _near(v: np.ndarray, cos: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector at cosine ``cos`` from unit vector ``v``."""
    r = rng.standard_normal(v.shape).astype(np.float32)
    r -= (r @ v) * v
    r /= np.linalg.norm(r)
    return cos * v + np.sqrt(1 - cos**2) * r


def _photo(v: np.ndarray) -> str:
    """A signal of the configured embedder for an arbitrary unit vector of its dimension."""
    from id2_plugin.adapters.threatexchange.signal_format import format_photo

    return format_photo(v, ID2PhotoSignal.identity_digest())


@pytest.fixture()
def configured(embedder_256):
    ID2PhotoSignal.configure(embedder=embedder_256, cosine_threshold=0.5)
    yield ID2PhotoSignal.embedder()
    ID2PhotoSignal.reset_configuration()


@pytest.fixture()
def small(small_embedder):
    """The 64 px raw-latent embedder (2,048-d) in use, cosine threshold 0.5."""
    ID2PhotoSignal.configure(embedder=small_embedder, cosine_threshold=0.5)
    yield ID2PhotoSignal.embedder()
    ID2PhotoSignal.reset_configuration()


@pytest.fixture(scope="session")
def pad_embedder(shared_dir: Path):
    """Same encoder, size and dimension as ``small_embedder`` but another resize policy: another identity."""
    from id2_plugin.adapters._shared import SerialEmbedder
    from id2_plugin.assembly import build_embedder
    from id2_plugin.config import EmbedderConfig

    return SerialEmbedder(
        build_embedder(
            EmbedderConfig(
                input_size=64, projection="none", device="cpu", batch_size=8, resize_policy="pad", allow_raw_latent=True
            )
        )
    )


def test_importing_the_adapters_loads_no_model() -> None:
    code = (
        "import sys, id2_plugin.adapters.threatexchange, id2_plugin.adapters.perception, id2_plugin.adapters.http\n"
        "import id2_plugin.adapters.threatexchange as tx\n"
        "assert tx.TX_MANIFEST.signal_types\n"
        "heavy = [m for m in ('torch', 'diffusers', 'faiss', 'av') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_photo_signal_conformance_on_real_photos(configured, photo_paths, edited_copies, tmp_path: Path) -> None:
    orig, other = photo_paths[0], photo_paths[1]
    check_signal_type(
        ID2PhotoSignal,
        matching_files=[(orig, edited_copies[orig])],
        non_matching_files=[(orig, other), (edited_copies[orig], other)],
        invalid_signals=["", "id2:2:abc:AAAA", "id2:3:" + "0" * 12 + ":" + "A" * 20],
    )
    examples = ID2PhotoSignal.get_examples()
    digest = ID2PhotoSignal.identity_digest()
    assert len(examples) == 3 and all(e.startswith(f"id2:2:{digest}:") for e in examples)
    assert all(ID2PhotoSignal.vectors(e).shape == (1, configured.dim) for e in examples)
    # Not an image / no file: a clear error naming the input, never an empty hash.
    with pytest.raises(HashError, match="not a recognised image"):
        ID2PhotoSignal.hash_from_bytes(b"not an image")
    bad = tmp_path / "bad.jpg"
    bad.write_text("not a jpeg")
    with pytest.raises(HashError, match=re.escape(str(bad))):
        ID2PhotoSignal.hash_from_file(bad)
    with pytest.raises(HashError, match="not found"):
        ID2PhotoSignal.hash_from_file(Path("/nonexistent.jpg"))


def test_video_signal_conformance_on_real_videos(
    small_embedder, photo_paths, edited_copies, make_video, make_frame, tmp_path: Path
) -> None:
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
    signal = ID2VideoSignal.hash_from_file(original)
    assert signal.startswith(f"id2_video:2:{ID2VideoSignal.identity_digest()}:")
    assert [row[:2] for row in parse_video_signal(signal)] == [(0.0, 0), (2.0, 8)]  # one entry per keyframe
    with pytest.raises(HashError, match="missing.mp4"):
        ID2VideoSignal.hash_from_file(tmp_path / "missing.mp4")


def test_compact_payload_keeps_real_cosines_and_is_url_safe(small, photo_paths) -> None:
    vecs = small.embed(photo_paths[:12])
    signals = [_photo(v) for v in vecs]
    assert all(re.fullmatch(r"id2:2:[0-9a-f]{12}:[A-Za-z0-9_-]+", s) for s in signals)
    # int8 + base64: 4/3 characters per dimension (float16 hex needed 4).
    assert len(signals[0].rsplit(":", 1)[1]) == -(-small.dim * 4 // 3)
    decoded = np.concatenate([ID2PhotoSignal.vectors(s) for s in signals])
    assert np.abs(decoded @ decoded.T - vecs @ vecs.T).max() < 2e-3
    assert ID2PhotoSignal.validate_signal_str(" " + signals[0] + "\n") == signals[0]


def test_the_door_refuses_other_embedders_dimensions_and_unversioned_hashes(
    small, pad_embedder, photo_paths, rng
) -> None:
    from id2_plugin.adapters.threatexchange.signal_format import format_photo, identity_digest

    mine = _photo(small.embed_one(photo_paths[0]))
    # A real hash of another embedder of the SAME dimension: comparing it would be silently meaningless.
    theirs = format_photo(pad_embedder.embed_one(photo_paths[0]), identity_digest(pad_embedder.identity))
    assert pad_embedder.dim == small.dim and theirs.split(":")[2] != mine.split(":")[2]
    with pytest.raises(SignalIdentityError, match="re-hash") as exc:
        ID2PhotoSignal.validate_signal_str(theirs)
    assert exc.value.reason == "other embedder"
    with pytest.raises(SignalIdentityError, match="different embedders"):
        ID2PhotoSignal.compare_hash(mine, theirs)
    # Right digest, wrong dimension (what used to make every index build fail): said as such, digest once.
    with pytest.raises(SignalIdentityError, match="holds 512 values where it makes 2048") as exc:
        ID2PhotoSignal.validate_signal_str(_photo(_unit(rng, 1, 512)[0]))
    assert str(exc.value).count(ID2PhotoSignal.identity_digest()) == 1
    # Upper-cased by some tool: named as a case change, not as a bad hexadecimal float16 hash.
    with pytest.raises(ValueError, match="case was changed"):
        ID2PhotoSignal.validate_signal_str(mine.upper())
    legacy = encode_vector(small.embed_one(photo_paths[0]))
    for call in (
        lambda: ID2PhotoSignal.validate_signal_str(legacy),
        lambda: ID2PhotoSignal.compare_hash(legacy, legacy),
    ):
        with pytest.raises(SignalIdentityError, match="unversioned.*upgrade_legacy_signal"):
            call()
    for bad in (
        "",
        "xyz",
        "id2:2:" + "0" * 12 + ":",
        "id2:2:nothex:AAAAAAAAAAAA",
        mine + "~",
        mine.replace(":2:", ":9:"),
    ):
        with pytest.raises(ValueError):
            ID2PhotoSignal.validate_signal_str(bad)


def test_legacy_signals_upgrade_only_explicitly_and_only_when_the_dimension_fits(small, photo_paths, rng) -> None:
    v = small.embed_one(photo_paths[0])
    upgraded = ID2PhotoSignal.upgrade_legacy_signal(encode_vector(v))
    assert ID2PhotoSignal.validate_signal_str(upgraded) == upgraded
    assert ID2PhotoSignal.compare_hash(upgraded, _photo(v)).distance.distance < 1e-3
    assert ID2PhotoSignal.upgrade_legacy_signal(upgraded) == upgraded
    with pytest.raises(SignalIdentityError, match="256-d"):
        ID2PhotoSignal.upgrade_legacy_signal(encode_vector(_unit(rng, 1, 256)[0]))
    # Version-1 video JSON (hex frames) still parses, and upgrades the same way.
    old_video = json.dumps({"id2_video": 1, "frames": [[0.0, 0, encode_vector(v)], [1.5, 6, encode_vector(v)]]})
    assert [f[:2] for f in parse_video_signal(old_video)] == [(0.0, 0), (1.5, 6)]
    new_video = ID2VideoSignal.upgrade_legacy_signal(old_video)
    assert ID2VideoSignal.validate_signal_str(new_video) == new_video
    assert [f[:2] for f in parse_video_signal(new_video)] == [(0.0, 0), (1.5, 6)]


def test_compare_hash_distance_and_threshold(small, rng) -> None:
    v = _unit(rng, 1, small.dim)[0]
    ID2PhotoSignal.configure(cosine_threshold=0.8)
    close, far = _photo(_near(v, 0.85, rng)), _photo(_near(v, 0.7, rng))
    res = ID2PhotoSignal.compare_hash(_photo(v), close)
    assert res.match and res.distance.distance == pytest.approx(0.15, abs=2e-3)
    assert not ID2PhotoSignal.compare_hash(_photo(v), far).match
    assert ID2PhotoSignal.compare_hash(_photo(v), _photo(v)).distance.distance == 0.0


def test_index_ranks_dedupes_and_respects_the_threshold(small, rng) -> None:
    refs = _unit(rng, 50, small.dim)
    hashes = [_photo(v) for v in refs]
    idx = ID2PhotoIndex.build([(h, i) for i, h in enumerate(hashes)])
    idx.add(hashes[7], "seven again")  # same signal: one vector, both entries
    assert len(idx) == 50 and idx.dim == small.dim and idx.digest == ID2PhotoSignal.identity_digest()
    matches = idx.query(_photo(_near(refs[7], 0.9, rng)))
    assert [m.metadata for m in matches] == [7, "seven again"]
    assert matches[0].similarity_info.distance == pytest.approx(0.1, abs=2e-3)
    # Two references near the query: both returned, closest first; the threshold is a cosine of 0.5.
    both = refs[1] + refs[2]  # cosine ~0.71 to each
    got = idx.query(_photo(both / np.linalg.norm(both)))
    assert {m.metadata for m in got} == {1, 2}
    dists = [m.similarity_info.distance for m in got]
    assert dists == sorted(dists) and all(d <= idx.threshold for d in dists)
    assert idx.query(_photo(_unit(rng, 1, small.dim)[0])) == []  # random direction: nowhere near
    assert ID2PhotoIndex().query(hashes[0]) == []


def test_a_changed_embedder_does_not_poison_the_bank_index(small, pad_embedder, photo_paths, edited_copies) -> None:
    """A bank holding hashes of an old embedder (and junk): the build keeps the current ones, counts the rest."""
    from id2_plugin.adapters.threatexchange.signal_format import format_photo, identity_digest

    current = [(_photo(v), i) for i, v in enumerate(small.embed(photo_paths[:4]))]
    old_digest = identity_digest(pad_embedder.identity)
    old = [(format_photo(v, old_digest), 100 + i) for i, v in enumerate(pad_embedder.embed(photo_paths[4:7]))]
    legacy = [(encode_vector(small.embed_one(photo_paths[7])), 200)]
    junk = [("id2:2:" + "0" * 12 + ":!!", 300), ("", 301)]
    idx = ID2PhotoIndex.build(old[:1] + current[:2] + old[1:] + legacy + junk + current[2:])
    assert len(idx) == 4 and idx.digest == ID2PhotoSignal.identity_digest()
    assert dict(idx.skipped) == {"other embedder": 3, "unversioned": 1, "malformed": 2}
    for (sig, content_id), p in zip(current, photo_paths[:4]):
        assert [m.metadata for m in idx.query(_photo(small.embed_one(edited_copies[p])))][:1] == [content_id]
    # A query of another embedder is refused loudly instead of returning meaningless distances.
    with pytest.raises(SignalIdentityError, match="rebuild the index"):
        idx.query(old[0][0])


def test_video_index_matches_on_the_best_keyframe_pair(small, rng) -> None:
    a, b, c = _unit(rng, 3, small.dim)
    ref = format_video_signal([(0.0, 0, a), (2.0, 48, b)])
    other = format_video_signal([(0.0, 0, c)])
    idx = ID2VideoIndex.build([(ref, "ref"), (other, "other")])
    query = format_video_signal([(0.0, 0, _unit(rng, 1, small.dim)[0]), (5.0, 120, _near(b, 0.9, rng))])
    got = idx.query(query)
    assert [m.metadata for m in got] == ["ref"]
    assert got[0].similarity_info.distance == pytest.approx(0.1, abs=2e-3)
    assert ID2VideoSignal.compare_hash(ref, query).match
    assert ID2VideoSignal.validate_signal_str(ref + " ") == ref
    for bad in ('{"id2_video": 1, "frames": []}', ref.split("~")[0] + "~1.2", ref.replace("id2_video", "id2")):
        with pytest.raises(ValueError):
            ID2VideoSignal.validate_signal_str(bad)


def test_a_three_keyframe_video_signal_fits_a_gunicorn_get_request_line(
    configured, photo_paths, make_video, make_frame, tmp_path: Path
) -> None:
    """The id2 signal with the shipped W (768-d): 3 keyframes took over 9,000 characters as hex JSON, now ~3,100.

    (The fused 1,280-d default fits 2 keyframes in a GET request line; the OMM guide says what to do beyond.)
    """
    video = make_video(tmp_path / "three.mp4", [make_frame(p) for p in photo_paths[8:11]])
    signal = ID2VideoSignal.hash_from_file(video)
    assert len(parse_video_signal(signal)) == 3
    request_line = f"GET /m/lookup?signal_type=id2_video&signal={signal} HTTP/1.1"
    assert len(request_line) <= GUNICORN_REQUEST_LINE, len(request_line)
    assert ID2VideoSignal.compare_hash(signal, signal).distance.distance == 0.0


def test_json_codec_refuses_what_pickle_would_run() -> None:
    from threatexchange.exchanges.fetch_state import SignalOpinion, SignalOpinionCategory

    value = {
        "a": (1, 2.5, None),
        3: frozenset({"x"}),
        "op": SignalOpinion(True, SignalOpinionCategory.NEGATIVE_CLASS, set()),
    }
    assert entry_codec.loads(entry_codec.dumps(value)) == value
    with pytest.raises(ValueError, match="not a dataclass"):
        entry_codec.decode({"__id2__": "dataclass", "cls": "subprocess:Popen", "f": {}})
    with pytest.raises(ValueError, match="not an Enum"):
        entry_codec.decode({"__id2__": "enum", "cls": "subprocess:Popen", "v": "echo"})
    with pytest.raises(ValueError, match="not a class"):
        entry_codec.decode({"__id2__": "dataclass", "cls": "os:system", "f": {}})
    with pytest.raises(TypeError, match="cannot serialise"):
        entry_codec.dumps(object())


def test_manifest_lists_both_signals() -> None:
    names = {s.get_name() for s in TX_MANIFEST.signal_types}
    assert names == {"id2", "id2_video"}
    TX_MANIFEST.verify()


def _run_tx(args: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HOME=str(home))
    env.pop("ID2_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "threatexchange.cli.main", *args],
        env=env,
        cwd=home,
        capture_output=True,
        text=True,
        timeout=900,
    )


def _tx(args: list[str], home: Path) -> str:
    proc = _run_tx(args, home)
    assert proc.returncode == 0, f"threatexchange {' '.join(args[:3])} failed:\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_cli_hash_of_an_unreadable_file_fails_with_a_message(tmp_path: Path, shared_dir: Path) -> None:
    """``threatexchange hash`` used to print nothing and exit 0 (``match``: see the slow CLI test)."""
    home = tmp_path / "home"
    home.mkdir()
    # ./id2.yaml in the CLI's cwd: the small raw-latent embedder keeps the model load short.
    (home / "id2.yaml").write_text(
        "embedder:\n  name: taef2\n  input_size: 64\n  projection: none\n  allow_raw_latent: true\n  device: cpu\n"
    )
    _tx(["config", "extensions", "add", "id2_plugin.adapters.threatexchange"], home)
    bad = home / "bad.jpg"
    bad.write_text("not a jpeg")
    proc = _run_tx(["hash", "-S", "id2", "photo", str(bad)], home)
    assert proc.returncode == 2 and proc.stdout == ""
    assert f"id2: cannot hash {bad}: not a recognised image format" in proc.stderr
    assert "Traceback" not in proc.stderr


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
    bad = home / "bad.jpg"
    bad.write_text("not a jpeg")
    proc = _run_tx(["match", "-S", "id2", "photo", str(bad)], home)
    assert proc.returncode == 2 and f"id2: cannot hash {bad}" in proc.stderr and "Traceback" not in proc.stderr
