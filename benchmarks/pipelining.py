#!/usr/bin/env python
"""``index add`` of real photos: decoding before each batch (sequential) against decoding overlapped with the
model (pipelined, ``Pipeline.add_files``), beside the model alone, in one run.

    python benchmarks/pipelining.py [--images 64] [--rounds 2] [--onnx] [--out benchmarks/results/pipelining.md]

The first ``--images`` photos of ``../shared/data/photos`` (sorted by name) are added to a fresh ``flat``
FAISS store in a temporary folder (removed after) by TAEF2 + the shipped W on the CPU, each way once per
round, the ways interleaved so load changes hit all alike:

* **model only**: the photos normalised beforehand, then ``embed_arrays`` in batches of 16 (no decode, no
  store): the ceiling any ingestion can reach on this machine now;
* **sequential**: per batch of 16, hash and decode + normalise each file in the calling thread, then embed
  and add (what the code did before: decoding and the model took turns);
* **pipelined 16** / **pipelined auto**: ``Pipeline.add_files`` with ``batch_size`` 16 / ``auto`` (a new
  pipeline per round, so ``auto`` pays for its tuning every time);
* with ``--onnx``, also **pipelined 16, onnxruntime fp32**: the same with ``embedder.runtime: onnxruntime``
  (the graph exported into the temporary folder first).

Roofline: TAEF2 costs 30.8 GFLOP per 256 px image and this CPU multiplies fp32 at ~113 GFLOP/s, so fp32
cannot exceed ~3.7 img/s. The machine is shared: the load average is printed with every measurement and
the comparisons are ratios within a round.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _output import emit  # noqa: E402
from _real_edits import PHOTOS  # noqa: E402

GFLOP_PER_IMAGE, ROOFLINE_GFLOPS = 30.8, 113.0
BATCH = 16


def embedder(runtime: str = "torch", weights: str | None = None):
    from id2_plugin.assembly import build_embedder
    from id2_plugin.config import EmbedderConfig

    return build_embedder(
        EmbedderConfig(name="taef2", device="cpu", batch_size=BATCH, runtime=runtime, weights=weights)
    )


def new_store(tmp: Path, e):
    from id2_plugin.stores.faiss_store import FaissStore

    return FaissStore(Path(tempfile.mkdtemp(dir=tmp)), embedder_identity=e.identity, dim=e.dim, create=True)


def model_only(e, photos: list[Path], tmp: Path) -> float:
    images = np.stack([e.normalise(p) for p in photos])
    t0 = time.perf_counter()
    for s in range(0, len(images), BATCH):
        e.embed_arrays(images[s : s + BATCH])
    return time.perf_counter() - t0


def sequential(e, photos: list[Path], tmp: Path) -> float:
    from id2_plugin.types import ReferenceRecord

    with new_store(tmp, e) as store:
        t0 = time.perf_counter()
        for s in range(0, len(photos), BATCH):
            chunk = photos[s : s + BATCH]
            shas = [hashlib.sha256(p.read_bytes()).hexdigest() for p in chunk]
            vectors = e.embed_arrays(np.stack([e.normalise(p) for p in chunk]))
            store.add(vectors, [ReferenceRecord(sha256=h, uri=str(p)) for h, p in zip(shas, chunk)])
        return time.perf_counter() - t0


def pipelined(batch_size):
    def run(e, photos: list[Path], tmp: Path) -> float:
        from id2_plugin.pipeline import Pipeline

        with Pipeline(e, new_store(tmp, e), batch_size=batch_size) as pipeline:
            t0 = time.perf_counter()
            result = pipeline.add_files(photos)
            elapsed = time.perf_counter() - t0
            assert len(result.added) == len(photos), result.failures
            run.chosen = pipeline.batching.chosen  # type: ignore[attr-defined]
        return elapsed

    return run


def measure(photos: list[Path], rounds: int, onnx: bool, tmp: Path) -> dict:
    torch_e = embedder()
    ways = {
        "model only": (torch_e, model_only),
        "sequential": (torch_e, sequential),
        "pipelined 16": (torch_e, pipelined(BATCH)),
        "pipelined auto": (torch_e, pipelined("auto")),
    }
    if onnx:
        from id2_plugin.embedders.taef2_int8 import export_taef2_fp32

        out = export_taef2_fp32(tmp / "models")
        ways["pipelined 16, onnxruntime fp32"] = (embedder("onnxruntime", str(out.parent)), pipelined(BATCH))
    for e, _ in ways.values():
        e.embed(photos[:2])  # warm-up: first-call allocations, ORT graph optimisation
    rates: dict[str, list[float]] = {k: [] for k in ways}
    loads: list[float] = []
    chosen: list[int | None] = []
    for r in range(rounds):
        for name, (e, fn) in ways.items():
            loads.append(os.getloadavg()[0])
            rates[name].append(len(photos) / fn(e, photos, tmp))
            print(f"round {r + 1} {name}: {rates[name][-1]:.2f} img/s (load {loads[-1]:.1f})", flush=True)
            if name == "pipelined auto":
                chosen.append(ways[name][1].chosen)  # type: ignore[attr-defined]
    return {"rates": rates, "loads": loads, "auto_chosen": chosen, "images": len(photos), "rounds": rounds}


def report(m: dict, argv: list[str]) -> list[str]:
    rates = m["rates"]
    seq = np.array(rates["sequential"])
    model = np.array(rates["model only"])
    lines = [
        f"# index add: sequential vs pipelined decoding ({platform.machine()}, {os.cpu_count()} cores, shared machine)",
        "",
        f"{m['images']} photos from data/photos, TAEF2 + W on the CPU, batch 16 unless noted, "
        f"{m['rounds']} interleaved "
        f"rounds; load average (1 min) during the runs {min(m['loads']):.1f}-{max(m['loads']):.1f} on 2 cores. "
        "Ratios are per round (same round, same load), then averaged.",
        "",
        "| way | img/s (mean of rounds) | vs sequential | of model only | GFLOP/s (30.8/img) "
        "| of 113 GFLOP/s roofline |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in rates.items():
        r = np.array(r)
        lines.append(
            f"| {name} | {r.mean():.2f} | {(r / seq).mean():.2f}x | {(r / model).mean():.0%} | "
            f"{r.mean() * GFLOP_PER_IMAGE:.0f} | {r.mean() * GFLOP_PER_IMAGE / ROOFLINE_GFLOPS:.0%} |"
        )
    lines += [
        "",
        f"`auto` chose batch sizes {m['auto_chosen']} (tries 4, 8, 16 once each after a warm-up batch).",
        "",
        f"`python benchmarks/pipelining.py {' '.join(argv)}`",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument(
        "--onnx", action="store_true", help="also the fp32 graph in ONNX Runtime (exported to a temp folder)"
    )
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    argv = argv if argv is not None else sys.argv[1:]
    photos = sorted(PHOTOS.glob("*.jpg"))[: args.images]
    with tempfile.TemporaryDirectory(prefix="id2-bench-") as tmp:
        m = measure(photos, args.rounds, args.onnx, Path(tmp))
    emit(report(m, argv), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
