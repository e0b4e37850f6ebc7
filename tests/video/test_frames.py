"""Decoding side of video scanning: keyframes at the decoder, fixed-rate sampling, near-duplicates, errors.

No model is involved here: these tests only decode real H.264 / MPEG-4 videos made from real photos.
"""

from __future__ import annotations

import io
import weakref
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from id2_plugin.errors import ConfigError, Id2Error, MediaError
from id2_plugin.video import FrameReader, VideoError, iter_frames, iter_video_files


def _decoded(path: Path, mode: str = "keyframes", fps: float | None = None) -> int:
    reader = FrameReader(path, mode, fps, dedupe=False)  # type: ignore[arg-type]
    for _ in reader:
        pass
    return reader.stats.frames_decoded


def test_keyframes_only_are_decoded_with_exact_timestamps(scene) -> None:
    frames = list(iter_frames(scene.path, dedupe=False))
    assert [f.index for f in frames] == scene.keyframes
    assert [f.pts_seconds for f in frames] == pytest.approx([k / scene.fps for k in scene.keyframes])
    assert all(f.is_key for f in frames)
    assert frames[0].rgb.shape == (240, 320, 3) and frames[0].rgb.dtype == np.uint8
    # The decoder skipped the non-key frames (skip_frame=NONKEY): 5 decodes instead of 32.
    assert _decoded(scene.path, "keyframes") == len(scene.keyframes)
    assert _decoded(scene.path, "all") == 32


def test_decoded_keyframe_shows_the_photo(frame_of, scene) -> None:
    first = next(iter_frames(scene.path))
    diff = np.abs(first.rgb.astype(np.int16) - frame_of(scene.refs[0]).astype(np.int16)).mean()
    assert diff < 8, diff  # H.264 at default quality: a few gray levels


def test_mpeg4_in_matroska(frame_of, make_video, ref_photos) -> None:
    arrays = [frame_of(p) for p in ref_photos[:3]]
    frames = [arrays[min(i // 5, 2)] for i in range(15)]
    path = make_video(frames, {0, 5, 11}, suffix=".mkv", codec="mpeg4")
    got = list(iter_frames(path, dedupe=False))
    assert [(f.index, f.is_key) for f in got] == [(0, True), (5, True), (11, True)]
    assert [f.pts_seconds for f in got] == pytest.approx([0.0, 1.25, 2.75])
    # three different photos: nothing to drop
    assert [f.index for f in iter_frames(path)] == [0, 5, 11]


@pytest.mark.parametrize(
    "fps,expected", [(1.0, [0, 4, 8, 12, 16, 20, 24, 28]), (2.0, list(range(0, 32, 2))), (10.0, list(range(32)))]
)
def test_fixed_rate_sampling(scene, fps: float, expected: list[int]) -> None:
    frames = list(iter_frames(scene.path, mode="fps", fps=fps, dedupe=False))
    assert [f.index for f in frames] == expected
    assert [f.pts_seconds for f in frames] == pytest.approx([i / scene.fps for i in expected])
    assert [f.is_key for f in frames] == [i in scene.keyframes for i in expected]


def test_fixed_rate_sampling_at_a_rate_that_does_not_divide_the_frame_rate(scene) -> None:
    times = [f.pts_seconds for f in iter_frames(scene.path, mode="fps", fps=3.0, dedupe=False)]
    # the first frame (frames every 0.25 s) at or after each sample time k/3 s: 0 -> 0, 1/3 -> 0.5, 2/3 -> 0.75
    assert times == pytest.approx([s + x for s in range(8) for x in (0.0, 0.5, 0.75)])


def test_near_duplicate_keyframe_is_dropped(scene) -> None:
    assert [f.index for f in iter_frames(scene.path)] == [0, 8, 16, 24]
    # every frame sampled at 1 fps: within each 2-s segment the second sample repeats the first
    assert [f.index for f in iter_frames(scene.path, mode="fps", fps=1.0)] == [0, 8, 16, 24]
    # a threshold of 0 disables dropping for all practical purposes
    assert len(list(iter_frames(scene.path, dedupe_threshold=0.0))) == len(scene.keyframes)


def test_dedupe_drops_a_degraded_copy_but_keeps_an_edit(frame_of, make_video, ref_photos) -> None:
    a = frame_of(ref_photos[0])
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=20)
    degraded = np.asarray(Image.open(buf).convert("RGB"))
    brighter = np.asarray(ImageEnhance.Brightness(Image.fromarray(a)).enhance(1.2))
    b = frame_of(ref_photos[1])
    path = make_video([a, degraded, brighter, b], {0, 1, 2, 3}, suffix=".mkv")
    assert [f.index for f in iter_frames(path, dedupe=False)] == [0, 1, 2, 3]
    assert [f.index for f in iter_frames(path)] == [0, 2, 3]


def test_frames_stream_lazily_and_are_not_retained(frame_of, make_video, ref_photos, tmp_path: Path) -> None:
    arrays = [frame_of(p) for p in ref_photos]
    path = make_video([arrays[i % len(arrays)] for i in range(24)], set(range(0, 24, 2)), suffix=".mkv")
    # A truncated copy: a lazy reader hands out the first frame before it could know about the cut.
    cut = tmp_path / "cut.mkv"
    data = path.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    it = iter_frames(cut, dedupe=False)
    assert next(it).index == 0
    refs = []
    for frame in iter_frames(path, dedupe=False):
        refs.append(weakref.ref(frame.rgb))
        del frame  # reference counting frees an unreferenced array at once: no gc pass is needed
        # only the frame just handed out may still be alive inside the decoder loop
        assert sum(r() is not None for r in refs[:-1]) == 0
    assert len(refs) == 12


def test_truncated_matroska_reports_the_frames_before_the_cut(frame_of, make_video, ref_photos, tmp_path: Path) -> None:
    arrays = [frame_of(p) for p in ref_photos]
    path = make_video([arrays[(i // 4) % len(arrays)] for i in range(48)], set(range(0, 48, 4)), suffix=".mkv")
    cut = tmp_path / "cut.mkv"
    data = path.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    got = []
    with pytest.raises(VideoError) as info:
        for frame in iter_frames(cut):
            got.append(frame)
    err = info.value
    assert err.kind == "truncated"
    assert "truncated" in str(err) and "12.00 s" in str(err) and str(cut) in str(err)
    assert 1 <= len(got) < 12
    assert [f.index for f in got] == list(range(0, 4 * len(got), 4))
    assert err.frames_read == len(got)
    assert err.at_seconds is not None and got[-1].pts_seconds < err.at_seconds < 12.0


def test_truncated_faststart_mp4_keeps_partial_frames(frame_of, make_video, ref_photos, tmp_path: Path) -> None:
    arrays = [frame_of(p) for p in ref_photos]
    path = make_video(
        [arrays[(i // 4) % len(arrays)] for i in range(48)],
        set(range(0, 48, 4)),
        suffix=".mp4",
        container_options={"movflags": "+faststart"},
    )
    cut = tmp_path / "cut.mp4"
    data = path.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.6)])
    for mode in ("keyframes", "all"):
        got = []
        with pytest.raises(VideoError) as info:
            for frame in iter_frames(cut, mode=mode, dedupe=False):  # type: ignore[arg-type]
                got.append(frame)
        assert info.value.kind in ("corrupt", "truncated")
        assert len(got) >= 2 and got[0].index == 0


def test_mp4_cut_before_its_index_cannot_be_opened(scene, tmp_path: Path) -> None:
    # A plain MP4 keeps its index (moov) at the end: without it no frame can be located.
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(scene.path.read_bytes()[:4000])
    with pytest.raises(VideoError) as info:
        list(iter_frames(cut))
    assert info.value.kind == "not_a_video" and info.value.frames_read == 0


@pytest.mark.parametrize(
    "name,content,kind",
    [
        ("empty.mp4", b"", "not_a_video"),
        ("random.mp4", np.random.default_rng(0).bytes(20_000), "not_a_video"),
        ("notes.mkv", b"this is a text file, not a video\n" * 50, "not_a_video"),
    ],
)
def test_non_videos_are_typed_errors(tmp_path: Path, name: str, content: bytes, kind: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(VideoError) as info:
        list(iter_frames(path))
    assert info.value.kind == kind
    assert isinstance(info.value, MediaError) and isinstance(info.value, Id2Error)
    assert str(path) in str(info.value)


def test_a_still_image_is_not_a_video(photo_paths: list[Path], tmp_path: Path) -> None:
    path = tmp_path / "photo.mp4"
    path.write_bytes(photo_paths[0].read_bytes())
    with pytest.raises(VideoError, match="still image") as info:
        list(iter_frames(path))
    assert info.value.kind == "not_a_video"


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(VideoError) as info:
        list(iter_frames(tmp_path / "nope.mp4"))
    assert info.value.kind == "not_found"
    with pytest.raises(VideoError, match="directory"):
        list(iter_frames(tmp_path))


def test_audio_only_file_has_no_video_stream(tmp_path: Path) -> None:
    import av

    path = tmp_path / "tone.mkv"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=16000)
        t = np.arange(16000, dtype=np.float32) / 16000
        samples = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    with pytest.raises(VideoError) as info:
        list(iter_frames(path))
    assert info.value.kind == "no_video_stream"


def test_display_rotation_is_applied(tmp_path: Path) -> None:
    import av

    frame = np.zeros((48, 96, 3), np.uint8)
    frame[:, :16] = 255  # a white band on the left of the stored (sensor) image
    path = tmp_path / "phone.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=4)
        stream.width, stream.height, stream.pix_fmt = 96, 48, "yuv420p"
        stream.set_display_rotation(90)  # show it turned 90 degrees counter-clockwise, as phones record
        for _ in range(2):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    rgb = next(iter_frames(path)).rgb
    assert rgb.shape == (96, 48, 3)  # portrait, as displayed
    # turned counter-clockwise, the left band ends up along the bottom
    assert rgb[-10:].mean() > 200 and rgb[:-20].mean() < 30


def test_unsupported_codec(frame_of, scene, make_video, ref_photos, tmp_path: Path) -> None:
    path = make_video([frame_of(ref_photos[0])] * 4, {0}, suffix=".mkv")
    data = path.read_bytes()
    assert data.count(b"V_MPEG4/ISO/AVC") == 1
    # Same-length rename of the Matroska CodecID: a codec no FFmpeg build knows.
    bad = tmp_path / "unknown-codec.mkv"
    bad.write_bytes(data.replace(b"V_MPEG4/ISO/AVC", b"V_ZZZZZ/ISO/AVC"))
    with pytest.raises(VideoError, match="unsupported codec") as info:
        list(iter_frames(bad))
    assert info.value.kind == "unsupported_codec"


@pytest.mark.parametrize(
    "kwargs", [dict(mode="fps"), dict(mode="fps", fps=0.0), dict(mode="keyframes", fps=2.0), dict(mode="bogus")]
)
def test_bad_sampling_options_are_config_errors(scene, kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        list(iter_frames(scene.path, **kwargs))


def test_iter_video_files_recurses_by_extension(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/x.mp4", "a/b/y.MKV", "a/b/z.webm", "a/readme.txt", "a/pic.jpg"):
        (tmp_path / name).write_bytes(b"0")
    explicit = tmp_path / "a" / "readme.txt"
    found = iter_video_files([tmp_path, explicit])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a/b/y.MKV", "a/b/z.webm", "a/x.mp4", "a/readme.txt"]
