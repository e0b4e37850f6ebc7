#!/usr/bin/env python
"""int8 vs fp32 TAEF2: fidelity first (per-image cosine, retrieval top-1), then throughput, in one run.

    python benchmarks/precision.py --models WORK/models [--distractors 300] [--rounds 3] \
        [--out benchmarks/results/precision.md]

``--models`` is a folder you name: the int8 model is made there (``quantize_taef2``, calibrated on 100 photos
of ``data/photos`` that are not real-edit origins, by content hash) unless it is already there.

Fidelity: every real-edit query (dev + train) and the same queries degraded (JPEG q30, Gaussian blur r=2,
downscaled to 1/4) are searched among all real-edit origins plus ``--distractors`` photos that were not
used for calibration; top-1 for the id2 embedding (TAEF2 + shipped W) and the raw latent, with both sides
at fp32, both at int8, and fp32 references with int8 queries (which the store refuses; shown for the record).

Throughput: the same photos embedded (normalise + encode + W, batch 16) by torch fp32, the exported graph
in ONNX Runtime fp32, and int8, interleaved round by round so load changes hit all alike; the best round
each. Roofline: 30.8 GFLOP per 256 px image, ~113 GFLOP/s fp32 peak measured on this CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _real_edits import PHOTOS, load_real_edits  # noqa: E402

GFLOP_PER_IMAGE, ROOFLINE_GFLOPS = 30.8, 113.0


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def split_photos(origins: list[Path], n_cal: int = 100) -> tuple[list[Path], list[Path]]:
    """(calibration, the rest): photos whose bytes are not a real-edit origin; calibration spread evenly."""
    taken = {_sha(p) for p in origins}
    photos = [p for p in sorted(PHOTOS.glob("*.jpg")) if _sha(p) not in taken]
    step = len(photos) // n_cal
    cal = photos[::step][:n_cal]
    rest = [p for p in photos if p not in set(cal)]
    return cal, rest


def degrade(path: Path, kind: str):
    from PIL import Image, ImageFilter

    im = Image.open(path).convert("RGB")
    if kind == "jpeg30":
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=30)
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    if kind == "blur2":
        return im.filter(ImageFilter.GaussianBlur(2))
    return im.resize((max(1, im.width // 4), max(1, im.height // 4)), Image.Resampling.BILINEAR)


def embedders(models: Path):
    from id2_plugin.assembly import build_embedder
    from id2_plugin.config import EmbedderConfig

    base = EmbedderConfig(name="taef2", device="cpu", batch_size=16)
    int8 = dataclasses.replace(base, precision="int8", weights=str(models / "taef2"))
    return {"fp32": build_embedder(base), "int8": build_embedder(int8)}


def latents(e, sources) -> np.ndarray:
    out = []
    for s in range(0, len(sources), 16):
        out.append(e.encoder.encode_arrays(np.stack([e.normalise(x) for x in sources[s : s + 16]])))
    return np.concatenate(out)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def top1(q: np.ndarray, g: np.ndarray, truth: np.ndarray) -> float:
    return float(((unit(q) @ unit(g).T).argmax(1) == truth).mean())


def fidelity(es, models: Path, n_distractors: int, limit: int | None) -> dict:
    re = load_real_edits()
    keep = slice(None, limit)  # --limit: a quick smoke run on the first pairs
    re.query_rows, re.origin_rows, re.sets = re.query_rows[keep], re.origin_rows[keep], re.sets[keep]
    origins = [re.paths[i] for i in re.origin_set_rows]
    _, rest = split_photos(origins)
    gallery = origins + rest[:: max(1, len(rest) // n_distractors)][:n_distractors]
    col = {p: i for i, p in enumerate(gallery)}
    truth = np.array([col[re.paths[o]] for o in re.origin_rows])
    queries = {"real-edits": [re.paths[i] for i in re.query_rows]}
    for kind in ("jpeg30", "blur2", "down4"):
        queries[kind] = [degrade(re.paths[i], kind) for i in re.query_rows]
    sets = np.array(re.sets)
    z = {p: {"gallery": latents(e, gallery), **{k: latents(e, v) for k, v in queries.items()}} for p, e in es.items()}
    w = es["fp32"].projection
    emb = {p: {k: {"raw": v, "id2": w.apply(v, (32, 32, 32))} for k, v in d.items()} for p, d in z.items()}
    out: dict = {"gallery": len(gallery), "queries_per_set": {s: int((sets == s).sum()) for s in ("dev", "train")}}
    for sig in ("id2", "raw"):
        allv = {p: np.concatenate([emb[p][k][sig] for k in emb[p]]) for p in emb}
        cos = (unit(allv["fp32"]) * unit(allv["int8"])).sum(1)
        out[f"cosine_{sig}"] = {
            "min": float(cos.min()),
            "p1": float(np.percentile(cos, 1)),
            "mean": float(cos.mean()),
            "n": len(cos),
        }
        for k in queries:
            for s in ("dev", "train"):
                m = sets == s
                g32, g8 = emb["fp32"]["gallery"][sig], emb["int8"]["gallery"][sig]
                q32, q8 = emb["fp32"][k][sig][m], emb["int8"][k][sig][m]
                out[f"top1_{sig}_{k}_{s}"] = {
                    "fp32": top1(q32, g32, truth[m]),
                    "int8": top1(q8, g8, truth[m]),
                    "fp32_refs_int8_queries": top1(q8, g32, truth[m]),
                }
    return out


def ort_fp32(models: Path):
    """The exported fp32 graph run by ONNX Runtime (same session settings as int8): isolates quantisation."""
    from id2_plugin.embedders import _taef2_quantize as q
    from id2_plugin.embedders.taef2_int8 import _cpu_session
    from id2_plugin.embedders.taesd import build_taef2
    from id2_plugin.models import resolve_model_file

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fp32.onnx"
        q.export_fp32(build_taef2(resolve_model_file("taef2", "taef2_encoder.pth"), None).encoder, path, 256)
        return _cpu_session(path)


def throughput(es, models: Path, n_images: int, rounds: int) -> dict:
    from id2_plugin.embedders import _taef2_quantize as q
    from id2_plugin.embedders.base import l2_normalise

    photos = sorted(PHOTOS.glob("*.jpg"))[:n_images]
    sess, w = ort_fp32(models), es["fp32"].projection

    def ort_embed(images):
        z = np.concatenate(
            [sess.run(None, {q.INPUT: q.nchw_unit(images[s : s + 16])})[0] for s in range(0, len(images), 16)]
        )
        return l2_normalise(w.apply(z.reshape(len(z), -1), (32, 32, 32)))

    runs = {
        "torch fp32": es["fp32"].embed_arrays,
        "onnxruntime fp32": ort_embed,
        "onnxruntime int8": es["int8"].embed_arrays,
    }
    norm = es["fp32"].normalise
    for f in runs.values():
        f(np.stack([norm(p) for p in photos[:2]]))  # warm-up
    best = {k: 0.0 for k in runs}
    for _ in range(rounds):
        for k, f in runs.items():
            t = time.perf_counter()
            f(np.stack([norm(p) for p in photos]))
            best[k] = max(best[k], len(photos) / (time.perf_counter() - t))
    return {"images": len(photos), "rounds": rounds, "img_per_s": best}


def report(fid: dict, thr: dict, argv: list[str]) -> str:
    rate = thr["img_per_s"]
    lines = [
        f"# int8 vs fp32 TAEF2 ({platform.machine()}, {os.cpu_count()} cores, shared machine)",
        "",
        f"Throughput: {thr['images']} photos, batch 16, normalise + encode + W, "
        f"best of {thr['rounds']} interleaved rounds.",
        "",
        "| path | images/s | vs torch fp32 | GFLOP/s (30.8/img) | of 113 GFLOP/s fp32 roofline |",
        "|---|---:|---:|---:|---:|",
    ]
    for k, r in rate.items():
        lines.append(
            f"| {k} | {r:.2f} | {r / rate['torch fp32']:.2f}x | {r * GFLOP_PER_IMAGE:.0f} "
            f"| {r * GFLOP_PER_IMAGE / ROOFLINE_GFLOPS:.0%} |"
        )
    lines += [
        "",
        f"Fidelity: {fid['cosine_id2']['n']} images (gallery + all queries), cosine int8 vs fp32 per image:",
        "",
        "| signal | min | 1st percentile | mean |",
        "|---|---:|---:|---:|",
    ]
    for sig in ("id2", "raw"):
        c = fid[f"cosine_{sig}"]
        lines.append(f"| {sig} | {c['min']:.4f} | {c['p1']:.4f} | {c['mean']:.4f} |")
    lines += [
        "",
        f"Top-1 among {fid['gallery']} references "
        "(all real-edit origins + distractor photos not used for calibration); "
        f"queries dev {fid['queries_per_set']['dev']}, train {fid['queries_per_set']['train']}:",
        "",
        "| signal | queries | set | fp32 | int8 | delta | fp32 refs, int8 queries |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for key, v in fid.items():
        if key.startswith("top1_"):
            _, sig, kind, s = key.split("_", 3)
            lines.append(
                f"| {sig} | {kind} | {s} | {v['fp32']:.3f} | {v['int8']:.3f} | {v['int8'] - v['fp32']:+.3f} "
                f"| {v['fp32_refs_int8_queries']:.3f} |"
            )
    lines += ["", f"`python benchmarks/precision.py {' '.join(argv)}`"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=Path, required=True, help="folder for the int8 model (made there if missing)")
    ap.add_argument("--distractors", type=int, default=300)
    ap.add_argument("--images", type=int, default=32, help="photos per throughput round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip-fidelity", action="store_true")
    ap.add_argument("--limit", type=int, default=None, help="only the first N real-edit pairs (smoke runs)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    argv = argv if argv is not None else sys.argv[1:]
    from id2_plugin.embedders.taef2_int8 import INT8_FILE, quantize_taef2

    if not (args.models / "taef2" / INT8_FILE).is_file():
        re = load_real_edits()
        cal, _ = split_photos([re.paths[i] for i in re.origin_set_rows])
        quantize_taef2(args.models, cal, count=len(cal))
    es = embedders(args.models)
    thr = throughput(es, args.models, args.images, args.rounds)
    print(json.dumps(thr))
    fid = {} if args.skip_fidelity else fidelity(es, args.models, args.distractors, args.limit)
    text = report(fid, thr, argv) if fid else json.dumps(thr)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
        args.out.with_suffix(".json").write_text(json.dumps({"throughput": thr, "fidelity": fid}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
