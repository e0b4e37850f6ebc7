"""Report generation on real photos: JSON / CSV content, self-contained HTML, PDF, resume from the cache,
and the HTML rendered by headless Chromium."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
from collections import Counter

import numpy as np
import pytest

SERIES = {"id2", "vae_raw", "pdq", "phash", "id2 [center_crop]", "vae_raw [center_crop]"}
LABELS = {"clean", "downscale:0.25", "crop:0.6"}


def test_report_json_has_every_method_and_attack(robustness_run):
    data = json.loads(robustness_run.paths["json"].read_text())
    pts = data["points"]
    combos = Counter((p["series"], p["label"]) for p in pts)
    assert set(combos) == {(s, lab) for s in SERIES for lab in LABELS}
    assert all(n == 1 for n in combos.values())
    for p in pts:
        for k in ("top1", "mAP", "micro_ap", "recall_at_p90", "recall_at_p999"):
            assert 0.0 <= p[k] <= 1.0, (p["series"], p["label"], k, p[k])
        assert p["recall_at_p999"] <= p["recall_at_p90"] + 1e-12
        lo = -1.0 if p["method"] in ("id2", "vae_raw") else 0.0
        for k in ("threshold_at_p90", "threshold_at_p999"):
            assert p[k] is None or lo - 1e-6 <= p[k] <= 1.0 + 1e-6
        assert p["n_queries"] == 10 and p["n_references"] == 24
        assert p["resize_policy"] == ("center_crop" if "[" in p["series"] else "squash")
    # Image-copy case: the clean query has the reference's exact pixels, so every method finds it.
    for p in pts:
        if p["label"] == "clean":
            assert p["top1"] == 1.0, p["series"]
    # A 40% crop breaks the global hashes on these photos (they are not crop-invariant).
    crop = {p["series"]: p["top1"] for p in pts if p["label"] == "crop:0.6"}
    assert crop["pdq"] < 0.9 and crop["phash"] < 0.9
    # Every top-1 carries its 95% interval; the configured embedder (id2) also reports MATCH at the threshold.
    for p in pts:
        assert p["top1_low"] <= p["top1"] <= p["top1_high"]
        if p["series"] == "id2":
            assert p["threshold"] == 0.5 and p["recall_at_threshold"] <= p["top1"] + 1e-12
            assert p["recall_at_threshold_low"] <= p["recall_at_threshold"] <= p["recall_at_threshold_high"]
        else:
            assert p["recall_at_threshold"] is None
    clean = next(p for p in pts if p["series"] == "id2" and p["label"] == "clean")
    assert clean["top1_low"] < 0.75  # 10 of 10 right still leaves a wide interval


def test_report_json_provenance_findings_failures(robustness_run):
    data = json.loads(robustness_run.paths["json"].read_text())
    prov = data["provenance"]
    emb = robustness_run.embedder
    assert prov["version"] and prov["seed"] == 0 and prov["command"] == "pytest robustness"
    assert prov["embedder_identity"] == emb.identity and prov["projection_digest"] == emb.projection.digest
    assert len(prov["manifest_digest"]) == 64 and prov["date"]
    assert prov["machine"]["cpu_count"] >= 1 and prov["machine"]["torch"]
    assert data["dataset"]["compared_policies"] == ["squash", "center_crop"]
    finding = data["findings"]["resize_policy"]
    assert set(finding) == {"id2", "vae_raw"}
    assert set(finding["vae_raw"]["mean_top1"]) == {"squash", "center_crop"}
    assert set(finding["vae_raw"]["per_family_mean_top1"]) == {"downscale", "crop"}
    # Failures are real top-1 errors with consistent scores, never on the clean level of a copy.
    assert data["failures"], "the strong crop must produce some failures"
    for f in data["failures"]:
        assert f["label"] in LABELS - {"clean"} and f["series"] in SERIES
        assert f["wrong_score"] >= f["true_score"] and f["wrong_reference"] != f["true_reference"]
    per_level = Counter((f["series"], f["label"]) for f in data["failures"])
    assert max(per_level.values()) <= 2
    pdq_crop = next(p for p in data["points"] if p["series"] == "pdq" and p["label"] == "crop:0.6")
    assert per_level[("pdq", "crop:0.6")] == min(2, round((1 - pdq_crop["top1"]) * 10))


def test_curves_csv_matches_json(robustness_run):
    data = json.loads(robustness_run.paths["json"].read_text())
    with open(robustness_run.paths["csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(data["points"])
    by_key = {(p["series"], p["label"]): p for p in data["points"]}
    for r in rows:
        p = by_key[(r["series"], r["label"])]
        assert float(r["top1"]) == pytest.approx(p["top1"]) and float(r["micro_ap"]) == pytest.approx(p["micro_ap"])
        assert r["threshold_at_p999"] == ("" if p["threshold_at_p999"] is None else r["threshold_at_p999"])


def test_html_is_self_contained_with_plots_tables_failures(robustness_run):
    text = robustness_run.paths["html"].read_text()
    srcs = re.findall(r'\b(?:src|href)=["\']([^"\']+)', text)
    assert srcs and all(s.startswith("data:") for s in srcs), [s[:40] for s in srcs if not s.startswith("data:")]
    assert "<script" not in text.lower() and "<link" not in text.lower()
    assert text.count("data:image/png;base64,") == 4  # 3 metric grids + the resize-policy grid
    assert text.count("data:image/jpeg;base64,") >= 3  # failure thumbnails: query, wrong match, origin
    for needle in (
        "Provenance",
        "manifest_digest",
        "machine.cpu_count",
        "Tables per attack",
        "vae_raw [center_crop]",
        robustness_run.embedder.identity,
        "crop:0.6",
        "Resize policy",
    ):
        assert needle in text, needle


def test_pdf_export(robustness_run):
    from id2_plugin.robustness.report import pdf_pages

    data = robustness_run.paths["pdf"].read_bytes()
    assert data.startswith(b"%PDF")
    kinds = [kind for kind, _ in pdf_pages(robustness_run.result)]
    # title, 4 plot pages, headline + 2 attack tables, the failure examples, provenance
    assert kinds[:5] == ["title", "curves", "curves", "curves", "curves"] and kinds[-1] == "table"
    assert "failures" in kinds and len(re.findall(rb"/Type\s*/Page\b", data)) == len(kinds)


def _overflowing_cells(fig) -> list[str]:
    """Texts of table cells whose drawn text runs outside the cell (the PDF tables used to overlap)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    bad = []
    for ax in fig.axes:
        for table in ax.tables:
            for cell in table.get_celld().values():
                box, text = cell.get_window_extent(renderer), cell.get_text().get_window_extent(renderer)
                if text.x0 < box.x0 - 1 or text.x1 > box.x1 + 1 or text.y0 < box.y0 - 1 or text.y1 > box.y1 + 1:
                    bad.append(cell.get_text().get_text())
    return bad


def test_pdf_tables_wrap_and_continue_instead_of_overlapping() -> None:
    from id2_plugin.robustness._pdf import table_figures

    long_cell = "id2-plugin robustness --photos ../shared/data/photos/" + "x" * 300
    rows = [["command", long_cell]] + [[f"row {i}", "value"] for i in range(80)]
    pages = table_figures("provenance", ["field", "value"], rows)
    assert len(pages) == 2  # 80+ rows continue on a second page
    assert all(_overflowing_cells(fig) == [] for fig in pages)
    first = pages[0].axes[0].tables[0].get_celld()
    assert first[(1, 1)].get_text().get_text().count("\n") >= 1  # the long value was wrapped, not cut
    assert "".join(first[(1, 1)].get_text().get_text().split("\n")) == long_cell


def test_pdf_pages_of_a_real_run_do_not_overflow_and_equal_curves_stay_apart(robustness_run):
    from id2_plugin.robustness.report import figures, pdf_pages

    for kind, fig in pdf_pages(robustness_run.result):
        if kind == "table":
            assert _overflowing_cells(fig) == []
    _, grid = figures(robustness_run.result)[0]
    lines = grid.axes[0].get_lines()
    assert len(lines) >= 2 and len({line.get_marker() for line in lines}) == len(lines)
    ys = [tuple(np.round(line.get_ydata(), 6)) for line in lines]
    assert len(set(ys)) == len(ys)  # no two series drawn on top of each other, even with equal values
    assert "equal values stay visible" in grid.legends[0].get_title().get_text()


def test_rerun_resumes_from_the_latent_cache_with_identical_results(robustness_run, taef2_encoder, monkeypatch):
    """Attacks are seeded, so a rerun hits the latent cache for every image and reproduces every point."""
    from id2_plugin.robustness import build_methods, run_robustness

    calls = []
    original = taef2_encoder._encode_batch

    def counting(x):
        calls.append(len(x))
        return original(x)

    monkeypatch.setattr(taef2_encoder, "_encode_batch", counting)
    cache = {"cache_root": os.environ["ID2_TEST_CACHE_DIR"], "use_cache": True}  # the opt-in cache the run used
    again = run_robustness(
        robustness_run.dataset,
        build_methods(robustness_run.embedder, **cache),
        robustness_run.suite,
        seed=0,
        embedder=robustness_run.embedder,
        compare_policies=("center_crop",),
        n_failures=2,
        progress=False,
        threshold=0.5,
        **cache,
    )
    assert calls == []
    assert [p.to_dict() for p in again.points] == [p.to_dict() for p in robustness_run.result.points]
    # Another seed moves the crops, which the cache has never seen: encoding happens.
    from id2_plugin.robustness import Crop, SuiteEntry

    run_robustness(
        robustness_run.dataset,
        build_methods(robustness_run.embedder, ["vae_raw"], **cache),
        [SuiteEntry("crop", (Crop(0.6),))],
        seed=1,
        embedder=robustness_run.embedder,
        progress=False,
        **cache,
    )
    assert sum(calls) == 10


@pytest.mark.browser
def test_html_renders_in_headless_chromium(robustness_run, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed")
    from PIL import Image

    shot = tmp_path / "report.png"
    proc = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}",
            "--window-size=1280,2000",
            "--enable-logging=stderr",
            "--v=0",
            robustness_run.paths["html"].resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    # Chromium logs every console message (errors included) as ":CONSOLE" lines; the page has no script.
    console = [ln for ln in proc.stderr.splitlines() if ":CONSOLE" in ln or "Uncaught" in ln]
    assert console == []
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape == (2000, 1280, 3)
    colours = np.unique(img.reshape(-1, 3), axis=0)
    assert len(colours) > 500, "a page with plots has many colours"

    def has_colour(rgb: tuple[int, int, int], tol: int = 12, min_px: int = 200) -> bool:
        return int((np.abs(img.astype(int) - rgb).max(axis=2) <= tol).sum()) >= min_px

    # The first plot grid is on screen: matplotlib's C0 blue and C1 orange curves are drawn.
    assert has_colour((31, 119, 180)) and has_colour((255, 127, 14))
