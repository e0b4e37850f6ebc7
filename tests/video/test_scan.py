"""Scanning videos against a real FAISS reference store with the real TAEF2 embedder (raw latent).

Scores measured for these videos: the references shown unedited score >= 0.9, the edited one ~0.75, the
unrelated photo < 0.2 against every reference; the threshold is the config default, 0.5.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from id2_plugin.video import (
    FrameReader,
    VideoError,
    VideoReport,
    embed_keyframes,
    format_report_text,
    scan_video,
    scan_videos,
)

THRESHOLD = 0.5


def _best_uri(hit) -> str:
    return hit.matches[0].uri


@pytest.fixture(scope="module")
def scene_report(scene, video_embedder, ref_store) -> VideoReport:
    """The main scene scanned once with the defaults (keyframes, dedupe) and k=3."""
    return scan_video(scene.path, video_embedder, ref_store, k=3, threshold=THRESHOLD)


def test_scan_video_reports_matches_with_timestamps(scene, scene_report, video_embedder) -> None:
    report = scene_report
    assert report.ok and report.error is None
    assert (report.frames_decoded, report.frames_sampled, report.duplicates_dropped, report.frames_embedded) == (
        5,
        5,
        1,
        4,
    )
    assert report.codec == "h264" and (report.width, report.height) == (320, 240)
    assert report.duration_s == pytest.approx(8.0) and report.frame_rate == pytest.approx(4.0)
    expected = [(t, i) for t, i in scene.expected if i is not None]
    assert [(h.timestamp, h.frame_index) for h in report.hits] == [(t, int(t * scene.fps)) for t, _ in expected]
    assert [_best_uri(h) for h in report.hits] == [str(scene.refs[i]) for _, i in expected]
    # each match spans until the next sampled keyframe: the repeat at 1 s is dropped and does not end it
    assert [h.until for h in report.hits] == pytest.approx([2.0, 4.0, 6.0])

    summary = {s.uri: s for s in report.summary}
    assert set(summary) == {str(scene.refs[i]) for _, i in expected}
    first = summary[str(scene.refs[0])]
    assert (first.first_timestamp, first.last_timestamp, first.frames, first.best_frame_index) == (0.0, 2.0, 1, 0)
    edited = summary[str(scene.refs[2])]
    assert (edited.first_timestamp, edited.best_timestamp, edited.best_frame_index) == (4.0, 4.0, 16)
    assert first.best_score > 0.9 and summary[str(scene.refs[1])].best_score > 0.9
    assert THRESHOLD < edited.best_score < first.best_score  # the edit is found, with a lower score
    assert report.summary[0].best_score == max(s.best_score for s in report.summary)
    assert edited.labels == ("ref",) and len(edited.sha256) == 64


def test_report_serialises_and_round_trips(scene_report, video_embedder) -> None:
    report = scene_report
    d = json.loads(json.dumps(report.to_dict()))
    assert d["ok"] is True and d["is_match"] is True and d["error"] is None
    assert d["mode"] == "keyframes" and d["embedder"] == video_embedder.identity
    assert {"frame_index", "timestamp", "until", "is_key", "matches"} <= set(d["hits"][0])
    assert {"reference_id", "first_timestamp", "last_timestamp", "best_score", "frames"} <= set(d["summary"][0])
    back = VideoReport.from_dict(d)
    assert back.hits == [
        type(h)(h.frame_index, round(h.timestamp, 6), h.is_key, h.matches, round(h.until, 6)) for h in report.hits
    ]
    assert [s.reference_id for s in back.summary] == [s.reference_id for s in report.summary]


def test_text_summary(scene, scene_report) -> None:
    text = format_report_text(scene_report)
    lines = text.splitlines()
    assert lines[0].startswith(f"{scene.path}: MATCH (8.0 s, 5 sampled frames, 4 embedded, 1 near-duplicates dropped)")
    assert len(lines) == 4 and f"seen 0.00-2.00 s in 1 frames  {scene.refs[0]}" in text
    assert f"seen 2.00-4.00 s in 1 frames  {scene.refs[1]}" in text


def test_fixed_rate_scan_covers_each_segment(scene, video_embedder, ref_store) -> None:
    report = scan_video(scene.path, video_embedder, ref_store, k=1, threshold=THRESHOLD, mode="fps", fps=1.0)
    assert (report.frames_decoded, report.frames_sampled, report.duplicates_dropped, report.frames_embedded) == (
        32,
        8,
        4,
        4,
    )
    spans = {s.uri: (s.first_timestamp, s.last_timestamp) for s in report.summary}
    assert spans == {str(scene.refs[0]): (0.0, 2.0), str(scene.refs[1]): (2.0, 4.0), str(scene.refs[2]): (4.0, 6.0)}


def test_last_shot_spans_to_the_end_of_the_video(make_video, frame_of, ref_photos, video_embedder, ref_store) -> None:
    # One photo for 2 s (8 frames at 4 fps) with a single keyframe: the match covers the whole 2 s.
    path = make_video([frame_of(ref_photos[3])] * 8, {0}, suffix=".mp4")
    report = scan_video(path, video_embedder, ref_store, k=1, threshold=THRESHOLD)
    assert report.ok and [(h.timestamp, h.until) for h in report.hits] == [(0.0, pytest.approx(2.0))]
    assert f"seen 0.00-2.00 s in 1 frames  {ref_photos[3]}" in format_report_text(report)


def test_truncated_video_keeps_partial_results(
    make_video, frame_of, ref_photos, video_embedder, ref_store, tmp_path: Path
) -> None:
    # 16 s: references 0, 1, 3 and 4 for 4 s each, a keyframe every 2 s; then cut in the middle.
    order = [0, 1, 3, 4]
    frames = [frame_of(ref_photos[order[i // 16]]) for i in range(64)]
    path = make_video(frames, set(range(0, 64, 8)), suffix=".mkv")
    cut = tmp_path / "cut.mkv"
    data = path.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    report = scan_video(cut, video_embedder, ref_store, k=1, threshold=THRESHOLD)
    assert not report.ok and report.error_kind == "truncated" and "16.00 s" in (report.error or "")
    assert report.frames_embedded >= 1
    seen = {s.uri for s in report.summary}
    assert str(ref_photos[0]) in seen  # shown before the cut
    assert str(ref_photos[4]) not in seen  # shown after it
    assert all(h.timestamp < 8.0 for h in report.hits)


@pytest.mark.parametrize("content,kind", [(b"", "not_a_video"), (b"\x00\x01garbage" * 500, "not_a_video")])
def test_bad_files_give_reports_not_exceptions(
    tmp_path: Path, video_embedder, ref_store, content: bytes, kind: str
) -> None:
    path = tmp_path / "bad.mp4"
    path.write_bytes(content)
    report = scan_video(path, video_embedder, ref_store)
    assert report.error_kind == kind and not report.ok
    assert report.hits == [] and report.frames_embedded == 0 and report.path == str(path)


class _MeanColourEmbedder:
    """A cheap stand-in model (mean RGB, L2-normalised) that checks how many frames are in flight."""

    identity = "test-mean-rgb"
    dim = 3

    def __init__(self, encoder, pulled: list[int], batch_size: int) -> None:
        self.encoder = encoder
        self.pulled = pulled
        self.batch_size = batch_size
        self.embedded = 0
        self.calls: list[int] = []

    def normalise(self, source):
        return self.encoder.normalise(source)

    def embed_arrays(self, images: np.ndarray) -> np.ndarray:
        # Frames pulled from the decoder but not embedded yet: this batch, the two batches decoded ahead
        # meanwhile, the frame held back for its duplicates and the one waiting for a free slot.
        assert self.pulled[0] - self.embedded <= 3 * self.batch_size + 2
        self.calls.append(len(images))
        self.embedded += len(images)
        v = images.reshape(len(images), -1, 3).mean(axis=1).astype(np.float32) + 1.0
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_memory_stays_bounded_on_a_long_video(
    make_video, frame_of, ref_photos, taef2_encoder, monkeypatch, tmp_path: Path
) -> None:
    from id2_plugin.stores.faiss_store import FaissStore
    from id2_plugin.types import ReferenceRecord

    frames = [frame_of(ref_photos[i % 6]) for i in range(90)]
    path = make_video(frames, set(range(0, 90, 3)), suffix=".mkv")
    pulled = [0]
    original = FrameReader.__iter__

    def counting_iter(self):  # type: ignore[no-untyped-def]
        for item in original(self):
            pulled[0] += 1
            yield item

    monkeypatch.setattr(FrameReader, "__iter__", counting_iter)
    fake = _MeanColourEmbedder(taef2_encoder, pulled, batch_size=4)
    store = FaissStore(tmp_path / "s", embedder_identity=fake.identity, dim=3, create=True)
    store.add(np.eye(3, dtype=np.float32), [ReferenceRecord(sha256=f"{i:064x}", uri=f"axis{i}") for i in range(3)])
    report = scan_video(path, fake, store, k=1, threshold=0.0, mode="all", dedupe=False, batch_size=4)  # type: ignore[arg-type]
    store.close()
    assert report.ok and report.frames_embedded == pulled[0] == 90
    assert max(fake.calls) == 4 and len(fake.calls) == 23  # 22 full batches and the last 2 frames
    assert len(report.hits) == 90


def test_embed_keyframes(scene, video_embedder, ref_store) -> None:
    out = embed_keyframes(scene.path, video_embedder, batch_size=3)
    assert [(t, i) for t, i, _ in out] == [(0.0, 0), (2.0, 8), (4.0, 16), (6.0, 24)]
    vectors = np.stack([v for _, _, v in out])
    assert vectors.shape == (4, video_embedder.dim) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    best = [m[0] for m in ref_store.query(vectors, k=1)]
    assert [m.uri for m in best[:3]] == [str(scene.refs[i]) for i in range(3)]
    # the unrelated photo at 6 s was compared and rejected by the threshold, not skipped
    assert best[3].score < THRESHOLD


def test_embed_keyframes_refuses_an_undecodable_video(video_embedder, tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video" * 100)
    with pytest.raises(VideoError):
        embed_keyframes(bad, video_embedder)


def test_scan_videos_with_decoder_threads_matches_sequential(
    scene, scene_report, video_embedder, ref_store, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.mkv"
    bad.write_bytes(b"not a video" * 100)
    par = {
        r.path: r
        for r in scan_videos([scene.path, bad], video_embedder, ref_store, k=3, threshold=THRESHOLD, workers=2)
    }
    assert set(par) == {str(scene.path), str(bad)}
    assert par[str(bad)].error_kind == "not_a_video"
    a, b = scene_report, par[str(scene.path)]
    assert [(h.timestamp, h.matches[0].reference_id) for h in a.hits] == [
        (h.timestamp, h.matches[0].reference_id) for h in b.hits
    ]
    assert [h.matches[0].score for h in a.hits] == pytest.approx([h.matches[0].score for h in b.hits], abs=1e-5)
