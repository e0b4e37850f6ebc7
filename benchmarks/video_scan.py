"""Video scanning throughput on this machine: decoding (all frames vs keyframes only), keyframe embedding,
peak memory, and decoder threads sharing one model vs one process (and model) per worker.

    python benchmarks/video_scan.py [--minutes 10] [--compare-workers [--clip-minutes 0.5]] [--save FILE.md]

The test video is synthesised once from the shared photos and cached (``$ID2_CACHE_DIR/bench-videos`` or
``~/.cache/id2_plugin/bench-videos``): 1280x720, 25 fps, H.264 (libx264 veryfast, CRF 23), a keyframe
every 2 s (``keyint=50``; x264 may add more at scene cuts), one 8-s scene per photo with a slow pan so no
two frames are identical. Each measurement runs in a fresh process, so the peak RSS
(``ru_maxrss``) reported is that of the measurement alone (Python + torch + model + decoder).
The scenes' photos are indexed in a temporary FAISS store, so the scan does real searches and the table
also says how many scenes were found.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

SHARED = Path(os.environ.get("ID2_SHARED_DIR", Path(__file__).resolve().parent.parent.parent / "shared"))
PHOTOS = SHARED / "data" / "photos"
WIDTH, HEIGHT, FPS, SCENE_S, KEYINT_S = 1280, 720, 25, 8, 2


def _cache_dir() -> Path:
    """Where the synthetic videos (frames of the shared photos) are kept between runs: ``$ID2_BENCH_DIR``, else
    ``<tempdir>/id2-bench-videos`` - never a default cache of the project (delete it when done)."""
    d = Path(os.environ.get("ID2_BENCH_DIR") or Path(tempfile.gettempdir()) / "id2-bench-videos")
    d.mkdir(parents=True, exist_ok=True)
    return d


def _scene_photos(minutes: float, offset: int = 0) -> list[Path]:
    photos = sorted(PHOTOS.glob("*.jpg"))
    n = int(np.ceil(minutes * 60 / SCENE_S))
    return [photos[(offset + i) % len(photos)] for i in range(n)]


def synthesise(minutes: float, offset: int = 0) -> Path:
    """Make (once) the benchmark video; returns its cached path."""
    import av
    from PIL import Image

    out = _cache_dir() / f"synth_{minutes:g}min_o{offset}_{WIDTH}x{HEIGHT}_{FPS}fps_k{KEYINT_S}s.mp4"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.mp4")
    frames_total = int(minutes * 60 * FPS)
    t0 = time.perf_counter()
    with av.open(str(tmp), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.codec_context.gop_size = KEYINT_S * FPS
        stream.codec_context.options = {"preset": "veryfast", "crf": "23"}
        per_scene = SCENE_S * FPS
        big = None
        for i in range(frames_total):
            s, j = divmod(i, per_scene)
            if j == 0:
                photo = _scene_photos(minutes, offset)[s]
                big = np.asarray(
                    Image.open(photo).convert("RGB").resize((WIDTH + 160, HEIGHT + 90), Image.Resampling.BICUBIC)
                )
            x, y = 160 * j // per_scene, 90 * j // per_scene  # a slow pan: 20 px/s
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(big[y : y + HEIGHT, x : x + WIDTH]), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
            if i % (FPS * 60) == 0:
                print(f"  synthesising {out.name}: {i / FPS / 60:.0f}/{minutes:g} min", file=sys.stderr, flush=True)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, out)
    print(f"  synthesised {out} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return out


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


# -- measurements (each runs in its own process) ---------------------------------------------------------
def measure_decode(path: str, mode: str) -> dict[str, Any]:
    from id2_plugin.video import FrameReader

    reader = FrameReader(path, mode, None, dedupe=False)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    n = 0
    for _frame, _dup in reader:
        n += 1
    dt = time.perf_counter() - t0
    return {
        "frames": n,
        "decoded": reader.stats.frames_decoded,
        "seconds": dt,
        "video_s": reader.stats.duration_s,
        "peak_mb": _peak_mb(),
    }


def _open(store_path: str, projection: str, threads: int | None = None) -> tuple[Any, Any]:
    import torch

    from id2_plugin.assembly import build_embedder
    from id2_plugin.config import EmbedderConfig
    from id2_plugin.stores.faiss_store import FaissStore

    if threads:
        torch.set_num_threads(threads)
    emb = build_embedder(EmbedderConfig(projection=projection, allow_raw_latent=True, device="cpu", batch_size=16))
    return emb, FaissStore(store_path, embedder_identity=emb.identity, dim=emb.dim)


def measure_scan(path: str, store_path: str, projection: str, threshold: float) -> dict[str, Any]:
    from id2_plugin.video import scan_video

    emb, store = _open(store_path, projection)
    emb.embed_arrays(np.zeros((1, 256, 256, 3), np.uint8))  # warm-up allocation, not counted
    t0 = time.perf_counter()
    report = scan_video(path, emb, store, k=1, threshold=threshold)
    dt = time.perf_counter() - t0
    return {"report": report.to_dict(), "seconds": dt, "peak_mb": _peak_mb()}


def measure_workers(
    paths: list[str], store_path: str, projection: str, threshold: float, workers: int, kind: str
) -> dict[str, Any]:
    """``kind``: ``threads`` (one model, decoder threads) or ``processes`` (one model per process)."""
    from id2_plugin.video import scan_videos

    t0 = time.perf_counter()
    if kind == "threads":
        emb, store = _open(store_path, projection)
        emb.embed_arrays(np.zeros((1, 256, 256, 3), np.uint8))
        t0 = time.perf_counter()
        reports = list(scan_videos(paths, emb, store, k=1, threshold=threshold, workers=workers))
        embedded = sum(r.frames_embedded for r in reports)
        child_peak = 0.0
    else:
        # Each process loads its own model; torch threads split the cores between them. Model loading
        # counts: it is part of the cost of this design.
        threads = max(1, (os.cpu_count() or 1) // workers)
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            futs = [pool.submit(_scan_one, p, store_path, projection, threshold, threads) for p in paths]
            embedded = sum(f.result() for f in futs)
        child_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {
        "seconds": time.perf_counter() - t0,
        "embedded": embedded,
        "peak_mb": _peak_mb(),
        "child_peak_mb": child_peak,
    }


_WORKER_STATE: dict[str, Any] = {}


def _scan_one(path: str, store_path: str, projection: str, threshold: float, threads: int) -> int:
    from id2_plugin.video import scan_video

    if "emb" not in _WORKER_STATE:
        _WORKER_STATE["emb"], _WORKER_STATE["store"] = _open(store_path, projection, threads)
    return scan_video(path, _WORKER_STATE["emb"], _WORKER_STATE["store"], k=1, threshold=threshold).frames_embedded


def _in_fresh_process(fn: Any, *args: Any) -> Any:
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def build_store(photos: list[Path], store_path: Path, projection: str) -> dict[str, str]:
    import hashlib

    from id2_plugin.assembly import build_embedder
    from id2_plugin.config import EmbedderConfig
    from id2_plugin.stores.faiss_store import FaissStore
    from id2_plugin.types import ReferenceRecord

    emb = build_embedder(EmbedderConfig(projection=projection, allow_raw_latent=True, device="cpu", batch_size=16))
    unique = sorted(set(photos))
    vectors = emb.embed(unique)  # latents stay in memory
    store = FaissStore(store_path, embedder_identity=emb.identity, dim=emb.dim, create=True)
    store.add(vectors, [ReferenceRecord(sha256=hashlib.sha256(p.read_bytes()).hexdigest(), uri=str(p)) for p in unique])
    store.close()
    import torch

    return {"identity": emb.identity, "torch": f"{torch.__version__} ({torch.get_num_threads()} threads)"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="Length of the synthetic video.")
    ap.add_argument("--projection", default="default", help="'default' (shipped W, else raw latent), 'none' or a path.")
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument(
        "--compare-workers",
        action="store_true",
        help="Also time 4 short videos: sequential, 2 decoder threads + 1 model, 2 processes.",
    )
    ap.add_argument("--clip-minutes", type=float, default=0.5, help="Length of each --compare-workers video.")
    ap.add_argument("--save", default=None, help="Also write the markdown table (with the command) to this file.")
    args = ap.parse_args()

    # The parent stays light (no torch, no model): a spawned child's ru_maxrss starts from the RSS of the
    # process it was forked from, so a heavy parent would inflate every measurement.
    path = _in_fresh_process(synthesise, args.minutes)
    photos = _scene_photos(args.minutes)
    clips = (
        [_in_fresh_process(synthesise, args.clip_minutes, 100 + 10 * i) for i in range(4)]
        if args.compare_workers
        else []
    )
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        store_path = Path(tmp) / "store"
        built = _in_fresh_process(
            build_store,
            photos + [p for i in range(len(clips)) for p in _scene_photos(args.clip_minutes, 100 + 10 * i)],
            store_path,
            args.projection,
        )

        full = _in_fresh_process(measure_decode, str(path), "all")
        rows.append(("decode all frames to RGB (frames/s)", f"{full['frames'] / full['seconds']:.1f}"))
        rows.append(("  ... video seconds per wall second", f"{full['video_s'] / full['seconds']:.1f}"))
        rows.append(("  ... peak RSS (MB)", f"{full['peak_mb']:.0f}"))
        key = _in_fresh_process(measure_decode, str(path), "keyframes")
        rows.append(("decode keyframes only, skip_frame=NONKEY (keyframes/s)", f"{key['frames'] / key['seconds']:.1f}"))
        rows.append(("  ... video seconds per wall second", f"{key['video_s'] / key['seconds']:.1f}"))
        rows.append(("  ... frames decoded / keyframes in the video", f"{key['decoded']} / {key['frames']}"))
        rows.append(("  ... peak RSS (MB)", f"{key['peak_mb']:.0f}"))
        scan = _in_fresh_process(measure_scan, str(path), str(store_path), args.projection, args.threshold)
        rep = scan["report"]
        found = {s["uri"] for s in rep["summary"]}
        rows.append(
            (
                "scan_video keyframes: decode + dedupe + embed + search (keyframes embedded/s)",
                f"{rep['frames_embedded'] / scan['seconds']:.2f}",
            )
        )
        rows.append(("  ... wall time for the whole video (s)", f"{scan['seconds']:.1f}"))
        rows.append(
            (
                "  ... keyframes sampled / near-duplicates dropped / embedded",
                f"{rep['frames_sampled']} / {rep['duplicates_dropped']} / {rep['frames_embedded']}",
            )
        )
        rows.append(
            (
                "  ... scenes whose photo was found (threshold {:.2f})".format(args.threshold),
                f"{len(found & {str(p) for p in photos})} / {len(set(photos))}",
            )
        )
        rows.append(("  ... peak RSS incl. torch + model (MB)", f"{scan['peak_mb']:.0f}"))
        if clips:
            cp = [str(c) for c in clips]
            for label, workers, kind in (
                ("sequential (1 worker)", 1, "threads"),
                ("2 decoder threads, 1 shared model", 2, "threads"),
                ("2 processes, 1 model each", 2, "processes"),
            ):
                r = _in_fresh_process(
                    measure_workers, cp, str(store_path), args.projection, args.threshold, workers, kind
                )
                mem = f"{r['peak_mb']:.0f}" + (f" + 2 x {r['child_peak_mb']:.0f}" if kind == "processes" else "")
                rows.append(
                    (
                        f"4 x {args.clip_minutes:g}-min videos, {label}: wall s / keyframes/s / peak RSS MB",
                        f"{r['seconds']:.1f} / {r['embedded'] / r['seconds']:.2f} / {mem}",
                    )
                )

    header = (
        f"Video: {args.minutes:g} min synthetic 1280x720 25 fps H.264 (veryfast, keyframe every 2 s), "
        f"{path.stat().st_size / 1e6:.1f} MB. Embedder {built['identity']}; torch {built['torch']}; "
        f"{platform.machine()}, {os.cpu_count()} cores shared with other jobs."
    )
    table = "| measure | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
    print(header)
    print(table)
    if args.save:
        cmd = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
        Path(args.save).parent.mkdir(parents=True, exist_ok=True)
        Path(args.save).write_text(f"# Video scan benchmark\n\nCommand: `{cmd}`\n\n{header}\n\n{table}\n")


if __name__ == "__main__":
    main()
