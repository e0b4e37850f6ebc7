"""W from real edit pairs, chosen by grouped cross-validation: the API and `train --real`, on real data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from id2_plugin.embedders.base import Projection
from id2_plugin.train.real_pairs import Recipe, never_below, train_on_real_pairs


@pytest.fixture(scope="module")
def unlabelled(photo_paths, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("unlabelled")
    for p in photo_paths[:60]:
        (d / p.name).symlink_to(p)
    return d


@pytest.fixture(scope="module")
def latents_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("latents")


def test_train_on_real_pairs_never_picks_a_recipe_below_the_pca_map(
    real_edits_dir, unlabelled, latents_dir, taef2_encoder, tmp_path
):
    candidates = [
        Recipe("pca", pool=4, rank=40, eps=0.1),
        Recipe("pca", pool=4, rank=40, eps=10.0),
        Recipe("pair-whiten", pool=4, rank=40, eps=0.1, shrink=0.5),
        Recipe("cosface", pool=4, rank=40, eps=0.1, anchor=0.01, steps=40, lr=1e-2),
    ]
    logs: list[str] = []
    result = train_on_real_pairs(
        [real_edits_dir / "pairs.jsonl"],
        [unlabelled],
        tmp_path / "w.safetensors",
        encoder=taef2_encoder,
        candidates=candidates,
        n_folds=3,
        cache_dir=latents_dir,
        log=logs.append,
        progress=False,
    )
    assert len(result.results) == 4 and any("raw latent" in line for line in logs)
    pca_best = max(
        (r for r in result.results if r.params["kind"] == "pca"), key=lambda r: r.pooled["top1"] + r.pooled["mAP"]
    )
    chosen = next(r for r in result.results if r.name == result.recipe.name)
    assert result.recipe.kind == "pca" or never_below(chosen, pca_best)
    for r in result.results:  # every fold scores held-out queries of the 27 real edits
        assert sum(f["n_queries"] for f in r.folds) == 27 and len(r.folds) == 3
        assert r.per_family  # the dev manifest's editors ("source") are the families here

    w = Projection.load(tmp_path / "w.safetensors")
    assert w.pool == 4 and w.mean is not None and w.mean.shape == (w.in_dim,)
    assert json.loads(w.metadata["recipe"])["kind"] == result.recipe.kind
    assert json.loads(w.metadata["cross_validated"]) == pytest.approx(chosen.pooled)
    # the saved map is the chosen recipe fitted on every pair: it embeds real edits near their origins
    z = taef2_encoder.encode([real_edits_dir / "edited" / "d000.jpg"])
    assert np.isfinite(w.apply(z, taef2_encoder.latent_shape)).all()


def test_train_cli_real_recipe_end_to_end(real_edits_dir, unlabelled, latents_dir, tmp_path):
    from id2_plugin.cli import cli, load_commands

    load_commands()
    out = tmp_path / "w.safetensors"
    res = CliRunner().invoke(
        cli,
        [
            "train",
            "--recipe",
            "pair-whiten",
            "--real",
            str(real_edits_dir / "pairs.jsonl"),
            "--unlabelled",
            str(unlabelled),
            "--pool",
            "4",
            "--rank",
            "32",
            "--folds",
            "3",
            "--cache-dir",
            str(latents_dir),
            "--out",
            str(out),
            "--json",
        ],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["recipe"]["kind"] in ("pca", "pair-whiten") and len(report["candidates"]) == 2
    assert {"mean", "min", "max"} <= set(report["chosen"]["fold_spread"]["mAP"])
    assert Projection.load(out).out_dim == 32
    res = CliRunner().invoke(cli, ["train", "--recipe", "pca", "--out", str(out)])
    assert res.exit_code == 2 and "--real" in res.output
