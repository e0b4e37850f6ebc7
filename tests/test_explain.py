"""``explain``: the written picture holds both normalised images and the scores; the numbers are real."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from id2_plugin.config import load_config
from id2_plugin.explain import Explanation, explain_match

CPU = {"embedder": {"device": "cpu"}}


@pytest.fixture(scope="module")
def embedder(shared_dir):
    """The default embedder (fused id2 + SSCD when SSCD resolves), as identification builds it."""
    from id2_plugin.assembly import build_embedder

    return build_embedder(load_config(None, CPU).embedder)


@pytest.fixture(scope="module")
def pair(photo_paths: list[Path]) -> tuple[Image.Image, Path, Path]:
    """A crop of a real photo (the query), that photo, and an unrelated photo."""
    ref = photo_paths[10]
    img = Image.open(ref).convert("RGB")
    w, h = img.size
    return img.crop((w // 8, h // 8, w - w // 10, h - h // 6)), ref, photo_paths[400]


@pytest.fixture(scope="module")
def copy_explained(embedder, pair, tmp_path_factory: pytest.TempPathFactory) -> Explanation:
    crop, ref, _ = pair
    out = tmp_path_factory.mktemp("explain") / "crop.png"
    return explain_match(crop, ref, load_config(None, CPU), out=out, embedder=embedder)


def _region(png: Image.Image, box: tuple[int, int, int, int]) -> np.ndarray:
    return np.asarray(png.crop(box), dtype=np.int16)


def test_png_holds_both_normalised_images_and_the_scores(copy_explained: Explanation, embedder, pair) -> None:
    crop, ref, _ = pair
    expl = copy_explained
    assert expl.out is not None and expl.out.is_file()
    assert sorted(os.listdir(expl.out.parent)) == ["crop.png"]  # nothing else written, no temp file left
    png = Image.open(expl.out)
    png.load()
    panels = expl.panels
    assert png.size[0] >= max(b[2] for b in panels.values()) and png.size[1] >= max(b[3] for b in panels.values())
    assert png.size[0] >= 900 and png.size[1] >= 700
    # Both images, as identification normalises them, are where the panels say.
    for name, source in (("query", crop), ("reference", ref)):
        box = panels[name]
        shown = np.asarray(
            Image.fromarray(embedder.normalise(source)).resize(
                (box[2] - box[0], box[3] - box[1]), Image.Resampling.BICUBIC
            ),
            np.int16,
        )
        assert np.abs(_region(png, box) - shown).mean() < 3, name
    assert np.abs(_region(png, panels["query"]) - _region(png, panels["reference"])).mean() > 10
    # The per-signal scores are in the PNG (text chunks) and in the returned dataclass, and they are the
    # scores identification computes: the cosine of the two embeddings.
    names = {p.name for p in getattr(embedder, "parts", [embedder])}
    assert names <= set(expl.scores) and all(f"score.{n}" in png.text for n in expl.scores)
    assert {n: float(png.text[f"score.{n}"]) for n in expl.scores} == pytest.approx(expl.scores, abs=1e-6)
    vecs = embedder.embed([crop, ref])
    assert float(vecs[0] @ vecs[1]) == pytest.approx(expl.score, abs=1e-4)
    assert json.loads(png.text["id2-explain"])["scores"] == pytest.approx(expl.scores)


def test_a_crop_has_many_inliers_and_an_unrelated_photo_few(
    copy_explained: Explanation, embedder, pair, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    crop, ref, other = pair
    named = tmp_path_factory.mktemp("names") / "a<!--<script>&\"'.jpg"  # a name an HTML page must not obey
    shutil.copy(other, named)
    unrelated = explain_match(named, ref, load_config(None, CPU), out=tmp_path / "x.html", embedder=embedder)
    assert copy_explained.inliers is not None and copy_explained.inliers >= 40
    assert unrelated.inliers is not None and unrelated.inliers < 15
    assert copy_explained.score > unrelated.score + 0.3
    assert copy_explained.cell_similarity.shape == unrelated.cell_similarity.shape == (32, 32)
    assert copy_explained.cell_similarity.mean() > unrelated.cell_similarity.mean() + 0.1
    page = (tmp_path / "x.html").read_text()
    assert "data:image/png;base64," in page and f"{unrelated.score:.4f}" in page
    assert "<!--" not in page and page.count("<script") == 1
    embedded = json.loads(page.split("id='id2-explain'>", 1)[1].split("</script>", 1)[0])  # as JSON.parse sees it
    assert embedded == json.loads(json.dumps(unrelated.to_dict())) and embedded["query"] == str(named)
    assert sorted(os.listdir(tmp_path)) == ["x.html"]


def test_cli_explain_writes_only_where_asked(pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from id2_plugin.cli import cli, load_commands

    load_commands()
    _, ref, _ = pair
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["--set", "embedder.device=cpu", "explain", str(ref), str(ref), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["is_match"] and doc["score"] > 0.99 and doc["out"] is None
    assert os.listdir(tmp_path) == []
    unrelated = CliRunner().invoke(cli, ["--set", "embedder.device=cpu", "explain", str(ref), str(pair[2])])
    assert unrelated.exit_code == 1 and "NO MATCH" in unrelated.stdout  # exit 1: below the threshold
    bad = CliRunner().invoke(cli, ["explain", str(ref), str(ref), "--out", "x.jpg"])
    assert bad.exit_code == 2 and "png or .html" in bad.stderr
