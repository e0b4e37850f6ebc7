"""Trainer: CosFace, schedule, closed-form inits, latent caching, and real training runs on proxy pairs.

The real runs use 24 photos x 3 proxy edits encoded by the real TAEF2 at 128 px (latent 32x16x16, pooled
to 32x8x8) so that the whole module stays within seconds of CPU once the latents are cached.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from id2_plugin.embedders.base import Embedder, Projection, l2_normalise
from id2_plugin.errors import ConfigError
from id2_plugin.metrics import single_origin_metrics
from id2_plugin.pairs import load_pairs, manifest_digest
from id2_plugin.train.cosface import cosface_loss, lr_at
from id2_plugin.train.latents import cache_latents
from id2_plugin.train.linear_maps import init_projection, remove_direction
from id2_plugin.train.make_pairs import make_proxy_pairs
from id2_plugin.train.train_config import TrainConfig
from id2_plugin.train.trainer import train_projection

SMALL = dict(pool=2, out_dim=32, epochs=4, ids_per_batch=8, val_fraction=0.25, device="cpu", init_rank=64)


@pytest.fixture(scope="module")
def small_encoder(shared_dir: Path):
    from id2_plugin.embedders.taesd import TAEF2Encoder

    return TAEF2Encoder(weights=shared_dir / "models" / "taef2", device="cpu", input_size=128, batch_size=16)


@pytest.fixture(scope="module")
def small_set(photo_paths: list[Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(manifest of 24 origins x 3 pixel-space proxy edits, shared latent-matrix folder)."""
    root = tmp_path_factory.mktemp("small-set")
    manifest = make_proxy_pairs(
        photo_paths[100:124], root / "pairs", edits_per_origin=3, seed=0, latent_prob=0.0, progress=False
    )
    return manifest, root / "latents"


def _train(small_set, encoder, out: Path, save_dtype: str = "float16", **overrides):
    manifest, cache = small_set
    cfg = TrainConfig(**{**SMALL, **overrides})
    return train_projection(
        manifest,
        out,
        encoder=encoder,
        config=cfg,
        cache_dir=cache,
        save_dtype=save_dtype,
        progress=False,
        log=lambda s: None,
    )


# -- pure pieces --------------------------------------------------------------------------------------
def test_cosface_loss_matches_hand_computation() -> None:
    import torch

    e = torch.tensor([[3.0, 4.0]])  # normalised: (0.6, 0.8)
    w = torch.tensor([[2.0, 0.0], [0.0, 5.0]])  # normalised: identity
    # label 1: logits = s * (0.6, 0.8 - m) = (0.6, 0.3) with s=1, m=0.5 -> loss = log(1 + e^(0.6 - 0.3))
    loss = cosface_loss(e, w, torch.tensor([1]), scale=1.0, margin=0.5)
    assert float(loss) == pytest.approx(math.log(1 + math.exp(0.3)), rel=1e-6)
    # the reference setting s=64, m=0.35 on a wrong class: -log softmax = 64*(0.8) - 64*(0.6-0.35) + log(1+e^-...)
    loss = cosface_loss(e, w, torch.tensor([0]), scale=64.0, margin=0.35)
    assert float(loss) == pytest.approx(64 * 0.8 - 64 * 0.25 + math.log1p(math.exp(-64 * 0.55)), rel=1e-5)


def test_lr_schedule_warms_up_then_decays() -> None:
    lrs = [lr_at(s, 100, 10, 1.0) for s in range(101)]
    assert lrs[0] == pytest.approx(0.1) and lrs[10] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:11]))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[100] == pytest.approx(0.01)


def test_remove_direction_centres_without_bias(rng: np.random.Generator) -> None:
    x = rng.normal(size=(50, 20)) + 5.0  # large common offset, as raw latents have
    mu = x.mean(axis=0)
    w = remove_direction(rng.normal(size=(20, 6)), mu / np.linalg.norm(mu))
    assert np.allclose(mu @ w, 0.0, atol=1e-9)
    assert np.allclose(x @ w, (x - mu) @ w)


def test_lda_init_finds_the_identity_directions_raw_cosine_misses(rng: np.random.Generator) -> None:
    """Identities differ in 4 low-variance dims; edits add large noise in 30 others. LDA must ignore the noise."""
    n_id, per, d = 40, 10, 64
    centres = np.zeros((n_id, d))
    centres[:, :4] = rng.normal(size=(n_id, 4))
    labels = np.repeat(np.arange(n_id), per)
    x = centres[labels] + 0.05 * rng.normal(size=(n_id * per, d))
    x[:, 10:40] += 10.0 * rng.normal(size=(n_id * per, 30))
    x += 10.0  # a common offset, as raw latents have
    gallery = centres + 10.0  # one clean centre per identity; every training row is a query
    raw = single_origin_metrics(l2_normalise(x) @ l2_normalise(gallery).T, labels)
    mu = x.mean(axis=0)
    w = init_projection(x, labels, kind="lda", out_dim=4, rank=64, eps=0.01)
    lda = single_origin_metrics(l2_normalise((x - mu) @ w) @ l2_normalise((gallery - mu) @ w).T, labels)
    assert raw["top1"] < 0.6 and lda["top1"] > 0.9
    assert np.linalg.norm(w, axis=0).mean() == pytest.approx(1.0)
    assert init_projection(x, labels, kind="pca", out_dim=8).shape == (64, 8)
    assert init_projection(x, labels, kind="random", out_dim=8).shape == (64, 8)


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="init"):
        TrainConfig(init="magic")
    with pytest.raises(ConfigError, match="val_fraction"):
        TrainConfig(val_fraction=1.0)


# -- latent matrix ------------------------------------------------------------------------------------
def test_cache_latents_resumes_and_reports_unreadable(photo_paths, small_encoder, tmp_path, capfd) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    paths = [*photo_paths[:4], bad]
    mat, ok = cache_latents(paths, small_encoder, tmp_path / "c", progress=False)
    assert ok.tolist() == [True, True, True, True, False]
    assert "skipped unreadable image" in capfd.readouterr().err
    first = np.array(mat)
    assert np.abs(first[:4]).sum(axis=1).min() > 0
    # Simulate an interruption after the first two rows: only the others are encoded again.
    status_file = next((tmp_path / "c").glob("*.status.npy"))
    status = np.load(status_file)
    status[2:4] = 0
    np.save(status_file, status)
    calls: list[int] = []
    real = small_encoder.encode_arrays
    small_encoder.encode_arrays = lambda arr: (calls.append(len(arr)), real(arr))[1]
    try:
        mat2, ok2 = cache_latents(paths, small_encoder, tmp_path / "c", progress=False)
    finally:
        del small_encoder.encode_arrays
    assert calls == [2]
    assert np.array_equal(np.array(mat2), first) and ok2.tolist() == ok.tolist()


# -- real training runs -------------------------------------------------------------------------------
def test_training_saves_w_with_metadata_and_validation(small_set, small_encoder, tmp_path) -> None:
    manifest, _ = small_set
    res = _train(small_set, small_encoder, tmp_path / "w.safetensors", save_dtype="float32")
    proj = Projection.load(tmp_path / "w.safetensors")
    assert proj.weight.shape == (32 * 8 * 8, 32) and proj.pool == 2
    meta = proj.metadata
    assert meta["embedder_name"] == "taef2" and meta["embedder"] == small_encoder.identity
    assert json.loads(meta["latent_shape"]) == [32, 16, 16]
    assert meta["manifest_digest"] == manifest_digest(manifest) and meta["seed"] == "0" and meta["scaling"] == "none"
    assert len(json.loads(meta["loss_curve"])) == 4
    val = json.loads(meta["val_metrics"])
    assert {"raw_latent", "raw_pool2", "init_lda", "W"} <= set(val)
    assert all(0.0 <= val[k]["top1"] <= 1.0 and 0.0 < val[k]["mAP"] <= 1.0 for k in val)
    assert val["W"]["n_queries"] == 18  # 6 held-out origins x 3 edits
    assert all("val_top1" in h and "val_mAP" in h for h in res.history)
    assert 1 <= res.best_epoch <= 4 and val["W"]["mAP"] == pytest.approx(max(h["val_mAP"] for h in res.history))
    # The saved W is usable by the embedder it was trained for.
    emb = Embedder(small_encoder, proj).embed(
        [manifest.parent / "edited" / sorted(p.name for p in (manifest.parent / "edited").iterdir())[0]]
    )
    assert emb.shape == (1, 32) and np.linalg.norm(emb) == pytest.approx(1.0, abs=1e-5)


def test_loss_decreases_from_random_init(small_set, small_encoder, tmp_path) -> None:
    res = _train(small_set, small_encoder, tmp_path / "w.safetensors", init="random", epochs=6)
    losses = [h["loss"] for h in res.history]
    assert losses[-1] < 0.5 * losses[0]


def test_seeded_runs_are_identical(small_set, small_encoder, tmp_path) -> None:
    a = _train(small_set, small_encoder, tmp_path / "a.safetensors", epochs=2)
    b = _train(small_set, small_encoder, tmp_path / "b.safetensors", epochs=2)
    c = _train(small_set, small_encoder, tmp_path / "c.safetensors", epochs=2, seed=1)
    assert np.array_equal(a.projection.weight, b.projection.weight)
    assert a.history == b.history
    assert not np.array_equal(a.projection.weight, c.projection.weight)


def test_resume_continues_an_interrupted_run(small_set, small_encoder, tmp_path) -> None:
    manifest, cache = small_set
    full = _train(small_set, small_encoder, tmp_path / "full.safetensors", epochs=4)

    class Interrupt(Exception):
        pass

    def stop_at_epoch_3(msg: str) -> None:
        if msg.startswith("epoch 3:"):
            raise Interrupt

    cfg = TrainConfig(**SMALL)
    out = tmp_path / "resumed.safetensors"
    with pytest.raises(Interrupt):
        train_projection(
            manifest, out, encoder=small_encoder, config=cfg, cache_dir=cache, progress=False, log=stop_at_epoch_3
        )
    assert not out.exists()
    state = json.loads((tmp_path / "resumed.safetensors.ckpt" / "checkpoint.json").read_text())
    assert state["epoch"] == 2
    logs: list[str] = []
    res = train_projection(
        manifest, out, encoder=small_encoder, config=cfg, cache_dir=cache, resume=True, progress=False, log=logs.append
    )
    assert any(m.startswith("resumed from") for m in logs)
    assert np.array_equal(res.projection.weight, full.projection.weight)
    assert res.history == full.history
    with pytest.raises(ConfigError, match="other manifests, encoder or settings"):
        train_projection(
            manifest,
            out,
            encoder=small_encoder,
            config=TrainConfig(**{**SMALL, "lr": 1e-3}),
            cache_dir=cache,
            resume=True,
            progress=False,
            log=lambda s: None,
        )


def test_cli_train_and_make_pairs(small_set, photo_paths, tmp_path) -> None:
    from id2_plugin.cli import cli, load_commands

    load_commands()
    manifest, cache = small_set
    runner = CliRunner()
    out = tmp_path / "w.safetensors"
    args = [
        "--set",
        "embedder.input_size=128",
        "train",
        str(manifest),
        "--out",
        str(out),
        "--epochs",
        "2",
        "--pool",
        "2",
        "--out-dim",
        "16",
        "--ids-per-batch",
        "8",
        "--val-fraction",
        "0.25",
        "--device",
        "cpu",
        "--cache-dir",
        str(cache),
        "--json",
        "--init-rank",
        "48",
        "--whiten-eps",
        "0.5",
    ]
    res = runner.invoke(cli, args)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["shape"] == [2048, 16] and Path(summary["out"]).is_file() and "W" in summary["validation"]
    trained = json.loads(Projection.load(out).metadata["train_config"])
    assert (trained["init_rank"], trained["whiten_eps"]) == (48, 0.5)
    res = runner.invoke(
        cli,
        [
            "make-pairs",
            str(photo_paths[0]),
            str(photo_paths[1]),
            "--out",
            str(tmp_path / "p"),
            "--proxy",
            "--edits-per-origin",
            "1",
            "--latent-prob",
            "0",
            "--scene-prob",
            "1",
            "--donors",
            str(photo_paths[2]),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "wrote 2 pairs" in res.output
    assert all(p.source.startswith("proxy:restage") for p in load_pairs(tmp_path / "p" / "pairs.jsonl"))
    res = runner.invoke(
        cli, ["make-pairs", str(photo_paths[0]), "--out", str(tmp_path / "r"), "--proxy", "--crop-prob", "2"]
    )
    assert res.exit_code == 2 and "crop_prob=2.0 must be in [0, 1]" in res.output
    res = runner.invoke(cli, ["make-pairs", str(photo_paths[0]), "--out", str(tmp_path / "q")])
    assert res.exit_code == 2 and "exactly one of --model" in res.output


def test_latents_live_in_a_work_dir_deleted_after_training(small_set, small_encoder, tmp_path) -> None:
    # Latents decode back into the training images: without --cache-dir nothing of them outlives training.
    manifest, _cache = small_set
    out_dir = tmp_path / "out"
    train_projection(
        manifest,
        out_dir / "w.safetensors",
        encoder=small_encoder,
        config=TrainConfig(**{**SMALL, "epochs": 1}),
        progress=False,
        log=lambda s: None,
    )
    assert sorted(p.name for p in out_dir.iterdir()) == ["w.safetensors", "w.safetensors.ckpt"]
    assert not list(out_dir.rglob("*.npy"))
