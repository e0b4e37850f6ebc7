"""``Pipeline.scan_videos`` on Ray runs the same per-video scan as the local path (local Ray, 2 CPUs)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.mark.slow
def test_scan_videos_on_ray_matches_local_scan(scene, ref_store, video_embedder, tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    from id2_plugin.config import load_config
    from id2_plugin.pipeline import Pipeline, RayExecutor
    from id2_plugin.video import scan_video

    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"definitely not a video\n" * 40)
    cfg = load_config(
        None,
        {
            "store": {"path": str(ref_store.location)},
            "embedder": {"projection": "none", "allow_raw_latent": True, "device": "cpu", "batch_size": 4},
            "match": {"k": 2, "threshold": 0.5},
        },
    )
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with Pipeline.from_config(cfg) as pipeline:
            reports = {r.path: r for r in pipeline.scan_videos([scene.path, bad], executor=RayExecutor(workers=1))}
    finally:
        if started:
            ray.shutdown()
    assert set(reports) == {str(scene.path), str(bad)}
    assert reports[str(bad)].error_kind == "not_a_video" and reports[str(bad)].hits == []
    remote = reports[str(scene.path)]
    local = scan_video(scene.path, video_embedder, ref_store, k=2, threshold=0.5, batch_size=4)
    assert remote.ok and remote.embedder == local.embedder
    assert [(h.timestamp, h.frame_index, [m.reference_id for m in h.matches]) for h in remote.hits] == [
        (round(h.timestamp, 6), h.frame_index, [m.reference_id for m in h.matches]) for h in local.hits
    ]
    assert [s.best_score for s in remote.summary] == pytest.approx([s.best_score for s in local.summary], abs=1e-5)
