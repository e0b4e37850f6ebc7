"""Issue 15: reference photos shown letterboxed / pillarboxed in a 640x360 video are matched by ``scan-video``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

FRAME = (640, 360)


def boxed(path: Path, size: tuple[int, int] = FRAME) -> np.ndarray:
    """The photo fitted inside ``size`` with black bars (pillarbox for a 4:3 photo in 16:9)."""
    img = Image.open(path).convert("RGB")
    img.thumbnail(size, Image.Resampling.BICUBIC)
    frame = Image.new("RGB", size, (0, 0, 0))
    frame.paste(img, ((size[0] - img.width) // 2, (size[1] - img.height) // 2))
    return np.asarray(frame)


@pytest.fixture(scope="module")
def letterboxed_video(make_video, ref_photos: list[Path]) -> Path:
    """6 s at 4 fps, H.264: references 0, 1 and 2 for 2 s each, each inside black bars, one keyframe each."""
    segments = [boxed(ref_photos[i]) for i in range(3)]
    assert all((seg[:, :8] == 0).all() or (seg[:8] == 0).all() for seg in segments)  # bars really present
    frames = [segments[i // 8] for i in range(24)]
    return make_video(frames, {0, 8, 16}, suffix=".mp4")


def _scan(cli, ref_store, video: Path, *extra: str) -> dict:
    result = CliRunner().invoke(
        cli,
        [
            "--set",
            "embedder.device=cpu",
            "--set",
            "embedder.allow_raw_latent=true",
            *extra,
            "scan-video",
            "--store",
            str(ref_store.location),
            "--projection",
            "none",
            "--threshold",
            "0.8",
            "--k",
            "1",
            "--json",
            str(video),
        ],
    )
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.stdout.splitlines()[0])


def test_scan_video_matches_letterboxed_reference_photos(letterboxed_video: Path, ref_store, ref_photos) -> None:
    from id2_plugin.cli import cli, load_commands

    load_commands()
    report = _scan(cli, ref_store, letterboxed_video)
    assert report["ok"] and [round(h["timestamp"], 3) for h in report["hits"]] == [0.0, 2.0, 4.0]
    assert [h["matches"][0]["uri"] for h in report["hits"]] == [str(ref_photos[i]) for i in range(3)]
    on = [h["matches"][0]["score"] for h in report["hits"]]
    assert min(on) >= 0.9, on
    # The same video with framing off: the bars dominate the latent and the scores drop below the threshold.
    off = _scan(cli, ref_store, letterboxed_video, "--set", "media.unletterbox=false")
    assert len(off["hits"]) < 3
