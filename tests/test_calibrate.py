"""Threshold calibration: Clopper-Pearson bounds (hand-checked), threshold choice on hand-made scores,
real photos (JPEG / blurred copies vs unrelated photos), the ``calibrate`` command and its config used
end to end by the Pipeline."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from id2_plugin.calibrate import (
    calibrate_threshold,
    clopper_pearson_upper,
    min_negatives_for,
    regularized_incomplete_beta,
)
from id2_plugin.calibration_files import save_histogram
from id2_plugin.calibration_scores import calibration_scores
from id2_plugin.errors import ConfigError


# ---------------------------------------------------------------------------------------------------
# Clopper-Pearson
# ---------------------------------------------------------------------------------------------------
def test_clopper_pearson_closed_forms() -> None:
    # k = 0: P(X <= 0) = (1 - p)^n = alpha  ->  p = 1 - alpha^(1/n); n = 3000: 1 - 0.05**(1/3000) = 0.000998079
    assert clopper_pearson_upper(0, 3000) == pytest.approx(1 - 0.05 ** (1 / 3000), rel=1e-12)
    assert clopper_pearson_upper(0, 3000) == pytest.approx(0.000998079, abs=1e-9)
    # k = n - 1: P(X <= n-1) = 1 - p^n = alpha  ->  p = 0.95^(1/n); n = 2: sqrt(0.95) = 0.9746794
    assert clopper_pearson_upper(1, 2) == pytest.approx(math.sqrt(0.95), rel=1e-12)
    assert clopper_pearson_upper(9, 10, 0.99) == pytest.approx(0.99**0.1, rel=1e-12)
    # k = n: nothing bounds the rate below 1.
    assert clopper_pearson_upper(5, 5) == 1.0
    # k = 0, n = 100: 1 - 0.05**0.01 = 0.0295130
    assert clopper_pearson_upper(0, 100) == pytest.approx(0.0295130, abs=1e-7)


def test_clopper_pearson_general_k() -> None:
    # k = 1, n = 100: p solves (1-p)^100 + 100 p (1-p)^99 = 0.05  ->  p = 0.0465598 (checked by substitution)
    p = clopper_pearson_upper(1, 100)
    assert (1 - p) ** 100 + 100 * p * (1 - p) ** 99 == pytest.approx(0.05, abs=1e-12)
    assert p == pytest.approx(0.0465598, abs=1e-7)
    bounds = [clopper_pearson_upper(k, 100) for k in range(101)]
    assert all(a < b for a, b in zip(bounds, bounds[1:]))  # monotone in k
    stats = pytest.importorskip("scipy.stats")
    for k, n, conf in [(1, 100, 0.95), (3, 100, 0.95), (5, 1000, 0.99), (17, 40, 0.9), (900, 10**6, 0.95)]:
        assert clopper_pearson_upper(k, n, conf) == pytest.approx(stats.beta.ppf(conf, k + 1, n - k), rel=1e-9)


def test_incomplete_beta_identities() -> None:
    assert regularized_incomplete_beta(1, 1, 0.3) == pytest.approx(0.3)  # uniform CDF
    assert regularized_incomplete_beta(3, 1, 0.5) == pytest.approx(0.125)  # x^a
    assert regularized_incomplete_beta(7, 7, 0.5) == pytest.approx(0.5)  # symmetry
    assert regularized_incomplete_beta(2, 5, 0.0) == 0.0 and regularized_incomplete_beta(2, 5, 1.0) == 1.0
    with pytest.raises(ValueError):
        clopper_pearson_upper(3, 2)


def test_min_negatives() -> None:
    # n >= ln(0.05) / ln(1 - target): 2994.23 -> 2995 for 1e-3; 58.40 -> 59 for 0.05
    assert min_negatives_for(1e-3) == 2995
    assert min_negatives_for(0.05) == 59
    assert clopper_pearson_upper(0, 2995) <= 1e-3 < clopper_pearson_upper(0, 2994)


# ---------------------------------------------------------------------------------------------------
# threshold choice on hand-made scores
# ---------------------------------------------------------------------------------------------------
# positives 0.9 0.8 0.7 0.6; negatives: 98 x 0.1, 0.65, 0.75 (n = 100)
# bounds at n = 100: k=0 -> 0.02951, k=1 -> 0.04656, k=2 -> 0.06162
# target fpr 0.05: up to 1 false match allowed -> accept 0.75 (neg), reject 0.65 (neg):
#   accepted {0.9, 0.8, 0.75, 0.7}: threshold = midpoint(0.7, 0.65) = 0.675, recall 3/4, 1 false match
# target fpr 0.03: no false match allowed -> accepted {0.9, 0.8}: threshold = midpoint(0.8, 0.75) = 0.775
POS = [0.9, 0.8, 0.7, 0.6]
NEG = [0.1] * 98 + [0.65, 0.75]


def test_calibrate_fpr_hand_computed() -> None:
    cal = calibrate_threshold(POS, NEG, target_fpr=0.05)
    assert cal.threshold == pytest.approx(0.675)
    assert (cal.false_matches, cal.n_pos, cal.n_neg, cal.target) == (1, 4, 100, "fpr")
    assert cal.recall == pytest.approx(0.75) and cal.fpr == pytest.approx(0.01)
    assert cal.fpr_upper_bound == pytest.approx(0.0465598, abs=1e-7)
    assert cal.precision == pytest.approx(3 / 4)
    cal = calibrate_threshold(POS, NEG, target_fpr=0.03)
    assert cal.threshold == pytest.approx(0.775)
    assert (cal.false_matches, cal.recall) == (0, 0.5)
    assert cal.fpr_upper_bound == pytest.approx(0.0295130, abs=1e-7)
    json.dumps(cal.to_dict())


# positives: 40 x 0.9, 10 x 0.5; negatives: 99 x 0.1, 1 x 0.6 (n = 100).
# conservative precision TP / (TP + 100 * bound(FP)):
#   accept >= 0.9: 40 / (40 + 2.9513) = 0.93129
#   accept >= 0.6: 40 / (40 + 4.6560) = 0.89574
#   accept >= 0.5: 50 / (50 + 4.6560) = 0.91481   (not monotone: more positives outweigh the false match)
#   accept >= 0.1: 50 / (50 + 100 * 1.0) < 0.34
# target 0.90 -> accept >= 0.5: threshold midpoint(0.5, 0.1) = 0.3, recall 1
# target 0.92 -> accept >= 0.9 only: threshold midpoint(0.9, 0.6) = 0.75, recall 0.8
def test_calibrate_precision_hand_computed() -> None:
    pos, neg = [0.9] * 40 + [0.5] * 10, [0.1] * 99 + [0.6]
    cal = calibrate_threshold(pos, neg, target_precision=0.90)
    assert cal.threshold == pytest.approx(0.3)
    assert (cal.recall, cal.false_matches, cal.target) == (1.0, 1, "precision")
    assert cal.precision == pytest.approx(50 / 51)
    assert cal.precision_lower_bound == pytest.approx(0.91481, abs=1e-5)
    cal = calibrate_threshold(pos, neg, target_precision=0.92)
    assert cal.threshold == pytest.approx(0.75)
    assert (cal.recall, cal.false_matches) == (0.8, 0)
    assert cal.precision_lower_bound == pytest.approx(0.93129, abs=1e-5)


def test_calibrate_refusals() -> None:
    # 50 negatives cannot show fpr <= 0.05 (zero false matches -> bound 1 - 0.05**(1/50) = 0.0582): need 59.
    with pytest.raises(ConfigError, match="need at least 59 negatives"):
        calibrate_threshold(POS, [0.1] * 50, target_fpr=0.05)
    with pytest.raises(ConfigError, match="need at least 2995 negatives"):
        calibrate_threshold(POS, NEG, target_fpr=1e-3)
    # 4 positives can never prove precision 0.999 (even 0 false matches may hide ~3).
    with pytest.raises(ConfigError, match="positives"):
        calibrate_threshold(POS, [0.1] * 10_000, target_precision=0.999)
    # Negatives above every positive: the target is met only by accepting nothing.
    with pytest.raises(ConfigError, match="no threshold"):
        calibrate_threshold([0.1] * 5, [0.9] * 100, target_fpr=0.05)
    with pytest.raises(ConfigError, match="exactly one"):
        calibrate_threshold(POS, NEG)
    with pytest.raises(ConfigError, match="exactly one"):
        calibrate_threshold(POS, NEG, target_fpr=0.05, target_precision=0.9)
    with pytest.raises(ConfigError, match="no negative"):
        calibrate_threshold(POS, [], target_fpr=0.05)


# ---------------------------------------------------------------------------------------------------
# real photos
# ---------------------------------------------------------------------------------------------------
N_REF, N_NEG = 30, 70  # 70 negatives >= 59, the minimum for a 5% false-match target at 95%


@pytest.fixture(scope="module")
def calib_data(photo_paths: list[Path], degraded_copy, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Pairs manifest of degraded copies (PNG) -> their origins, and a folder of unrelated negatives."""
    d = tmp_path_factory.mktemp("calib")
    (d / "copies").mkdir()
    (d / "negatives").mkdir()
    lines = []
    for i, p in enumerate(photo_paths[:N_REF]):
        out = d / "copies" / f"copy_{i:02d}.png"
        degraded_copy(p, i).save(out)
        lines.append(json.dumps({"query": f"copies/{out.name}", "origin": str(p)}))
    (d / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    negs = photo_paths[N_REF : N_REF + N_NEG]
    for p in negs:
        (d / "negatives" / p.name).symlink_to(p)
    return {"dir": d, "origins": photo_paths[:N_REF], "copies": sorted((d / "copies").iterdir()), "negatives": negs}


@pytest.fixture(scope="module")
def real_scores(calib_data, taef2_encoder, latent_cache) -> tuple[np.ndarray, np.ndarray]:
    from id2_plugin.embedders.base import Embedder
    from id2_plugin.evaluate import EmbedderMethod

    norm = taef2_encoder.normalise
    method = EmbedderMethod(Embedder(taef2_encoder, None), latent_cache)
    refs = [norm(p) for p in calib_data["origins"]]
    queries = [norm(p) for p in calib_data["copies"]]
    negs = [norm(p) for p in calib_data["negatives"]]
    return calibration_scores(method, queries, refs, np.eye(N_REF, dtype=bool), negs, chunk=16)


def test_calibrate_on_real_photos(real_scores, tmp_path: Path) -> None:
    pos, neg = real_scores
    assert pos.shape == (N_REF,) and neg.shape == (N_NEG,)
    cal = calibrate_threshold(pos, neg, target_fpr=0.05)
    # The reported counts are what the threshold really does on these scores.
    assert cal.false_matches == int((neg >= cal.threshold).sum()) <= 1  # bound(1, 70) = 0.066 > 0.05 -> 0 allowed
    assert cal.false_matches == 0 and cal.threshold > neg.max()
    assert cal.recall == pytest.approx(float((pos >= cal.threshold).mean()))
    assert cal.fpr_upper_bound == pytest.approx(1 - 0.05 ** (1 / N_NEG))
    # Raw VAE latents separate JPEG / blurred copies from unrelated photos on real data.
    assert cal.recall >= 0.8, (np.sort(pos)[:5], np.sort(neg)[-5:])
    with pytest.raises(ConfigError, match="need at least 2995"):
        calibrate_threshold(pos, neg, target_fpr=1e-3)
    png = tmp_path / "hist.png"
    save_histogram(pos, neg, cal.threshold, str(png))
    assert Image.open(png).format == "PNG" and Image.open(png).size == (700, 400)


def _invoke(args: list[str]):
    from id2_plugin.cli import cli, load_commands

    load_commands()
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def test_calibrate_command_and_pipeline_end_to_end(
    calib_data, real_scores, taef2_encoder, latent_cache, tmp_path: Path
) -> None:
    from id2_plugin.assembly import open_store
    from id2_plugin.config import MatchConfig, StoreConfig, load_config
    from id2_plugin.embedders.base import Embedder
    from id2_plugin.pipeline import Pipeline
    from id2_plugin.types import ReferenceRecord

    d = calib_data["dir"]
    expected = calibrate_threshold(*real_scores, target_fpr=0.05)

    # 1. Reference set = the pairs' origins: the command reproduces the library calibration exactly.
    out, plot = tmp_path / "cal.yaml", tmp_path / "hist.png"
    # --cache: the library scores above came through the (float16) latent cache; the same latents here
    res = _invoke(
        [
            "calibrate",
            "--pairs",
            str(d / "pairs.jsonl"),
            "--negatives",
            str(d / "negatives"),
            "--target-fpr",
            "0.05",
            "--projection",
            "none",
            "--out",
            str(out),
            "--plot",
            str(plot),
            "--cache",
            os.environ["ID2_TEST_CACHE_DIR"],
            "--per-query",
            str(tmp_path / "pq.jsonl"),
        ]
    )
    assert res.exit_code == 0, res.output
    assert "threshold" in res.stdout and "upper bound" in res.stdout and "Hamming" not in res.stdout
    records = [json.loads(line) for line in (tmp_path / "pq.jsonl").read_text().splitlines()]
    pos_recs = [r for r in records if r["kind"] == "positive"]
    neg_recs = [r for r in records if r["kind"] == "negative"]
    assert (len(pos_recs), len(neg_recs)) == (N_REF, N_NEG)
    assert sorted(r["score"] for r in pos_recs) == pytest.approx(sorted(real_scores[0]), abs=1e-4)
    assert sum(r["best_wrong_score"] >= expected.threshold for r in neg_recs) == expected.false_matches
    assert {r["best_wrong"] for r in neg_recs} <= {str(o) for o in calib_data["origins"]}
    cfg = load_config(out)
    # float32 cosines summed in other chunk sizes differ in the last bits: equal up to that
    assert cfg.match.threshold == pytest.approx(expected.threshold, rel=1e-6)
    assert cfg.calibration.threshold == cfg.match.threshold
    assert (cfg.calibration.n_pos, cfg.calibration.n_neg, cfg.calibration.target) == (N_REF, N_NEG, "fpr")
    assert cfg.calibration.fpr_upper_bound == pytest.approx(expected.fpr_upper_bound)
    assert cfg.calibration.embedder == Embedder(taef2_encoder, None).identity
    assert cfg.embedder.projection == "none"
    assert Image.open(plot).format == "PNG"

    # 1b. The default (fused) embedder calibrates the same way; the threshold is valid for its identity only.
    fused_out = tmp_path / "cal_fused.yaml"
    res = _invoke(
        [
            "calibrate",
            "--pairs",
            str(d / "pairs.jsonl"),
            "--negatives",
            str(d / "negatives"),
            "--target-fpr",
            "0.05",
            "--out",
            str(fused_out),
        ]
    )
    assert res.exit_code == 0, res.output
    fused_cfg = load_config(fused_out)
    assert fused_cfg.calibration.embedder.startswith("fused[id2=") and fused_cfg.calibration.recall >= 0.8

    # 1c. A PDQ threshold for HMA: in Hamming bits beside the similarity, match.threshold left unset.
    pdq_out = tmp_path / "cal_pdq.yaml"
    res = _invoke(
        [
            "calibrate",
            "--pairs",
            str(d / "pairs.jsonl"),
            "--negatives",
            str(d / "negatives"),
            "--target-fpr",
            "0.05",
            "--method",
            "pdq",
            "--out",
            str(pdq_out),
            "--json",
        ]
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["n_bits"] == 256 and doc["threshold_bits"] == int((1 - doc["threshold"]) * 256 + 1e-6)
    pdq_cfg = load_config(pdq_out)
    assert (pdq_cfg.calibration.method, pdq_cfg.calibration.threshold_bits) == ("pdq", doc["threshold_bits"])
    assert pdq_cfg.match.threshold == MatchConfig().threshold  # the plugin does not match with PDQ
    assert pdq_cfg.calibration.embedder.startswith("pdq")
    res = _invoke(
        [
            "calibrate",
            "--pairs",
            str(d / "pairs.jsonl"),
            "--negatives",
            str(d / "negatives"),
            "--target-fpr",
            "0.05",
            "--method",
            "phash",
            "--out",
            str(tmp_path / "cal_phash.yaml"),
        ]
    )
    assert res.exit_code == 0 and "match when distance <= " in res.stdout and "of 64 bits" in res.stdout

    # 2. Too few negatives for 1e-3: refused with exit 2 and nothing written.
    refused = tmp_path / "refused.yaml"
    res = _invoke(
        [
            "calibrate",
            "--pairs",
            str(d / "pairs.jsonl"),
            "--negatives",
            str(d / "negatives"),
            "--target-fpr",
            "1e-3",
            "--projection",
            "none",
            "--out",
            str(refused),
        ]
    )
    assert res.exit_code == 2 and "need at least 2995 negatives" in res.stderr
    assert not refused.exists()

    # 3. Against an existing store (Qdrant embedded mode) holding the origins, then the Pipeline
    #    loads the calibrated config and decides with the calibrated threshold.
    pytest.importorskip("qdrant_client")
    embedder = Embedder(taef2_encoder, None)
    store_dir = tmp_path / "store"
    store = open_store(
        StoreConfig(backend="qdrant", path=str(store_dir)),
        embedder_identity=embedder.identity,
        dim=embedder.dim,
        create=True,
    )
    import hashlib

    vecs = embedder.project(latent_cache.encode(calib_data["origins"]))
    store.add(
        vecs,
        [ReferenceRecord(sha256=hashlib.sha256(p.read_bytes()).hexdigest(), uri=str(p)) for p in calib_data["origins"]],
    )
    store.close()
    out2 = tmp_path / "cal_store.yaml"
    res = _invoke(
        [
            "--set",
            "store.backend=qdrant",
            "--set",
            "embedder.allow_raw_latent=true",
            "calibrate",
            "--pairs",
            str(d / "pairs.jsonl"),
            "--negatives",
            str(d / "negatives"),
            "--store",
            str(store_dir),
            "--target-fpr",
            "0.05",
            "--projection",
            "none",
            "--out",
            str(out2),
            "--json",
        ]
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    cfg2 = load_config(out2)
    assert cfg2.store.backend == "qdrant" and cfg2.store.path == str(store_dir)
    assert cfg2.match.threshold == summary["threshold"]
    # Same references as case 1, scored by the store instead of numpy: the same threshold up to float noise.
    assert cfg2.match.threshold == pytest.approx(expected.threshold, abs=1e-4)

    with Pipeline.from_config(cfg2) as pipeline:
        assert pipeline.context.threshold == cfg2.match.threshold
        copy = calib_data["copies"][0]
        report = pipeline.identify(copy)
        assert report.threshold == cfg2.match.threshold
        assert report.is_match and report.best.uri == str(calib_data["origins"][0])
        unrelated = pipeline.identify(calib_data["negatives"][0])
        assert unrelated.is_match == (unrelated.best.score >= cfg2.match.threshold)
        assert not unrelated.is_match  # 0 false matches among the calibration negatives
