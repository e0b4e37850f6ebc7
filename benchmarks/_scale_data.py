"""The scale benchmark's references: real embeddings, synthetic vectors with their statistics, exact search."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("ID2_SHARED_DIR", ROOT.parent / "shared"))


# -- data ----------------------------------------------------------------------------------------------------
def real_embeddings(n_photos: int, dim: int, seed: int) -> tuple[np.ndarray | None, str]:
    """Embeddings of the first ``n_photos`` photos, or (None, why) when the model / photos are missing."""
    if n_photos <= 0:
        return None, "disabled (--photos 0)"
    photos = sorted((SHARED / "data" / "photos").glob("*.jpg"))[:n_photos]
    weights = SHARED / "models" / "taef2"
    if not photos or not weights.is_dir():
        return None, f"unavailable (no photos / TAEF2 under {SHARED})"
    try:
        from id2_plugin.assembly import default_projection_path
        from id2_plugin.embedders.base import Embedder, Projection, l2_normalise
        from id2_plugin.embedders.taesd import TAEF2Encoder
    except ImportError as exc:
        return None, f"unavailable ({exc})"
    encoder = TAEF2Encoder(weights=weights, device="cpu", batch_size=16)
    t = time.perf_counter()
    # Latents stay in memory: nothing decodable into an image is written (no latent cache).
    latents = np.concatenate(
        [
            encoder.encode_arrays(np.stack([encoder.normalise(p) for p in photos[s : s + 32]]))
            for s in range(0, len(photos), 32)
        ]
    )
    secs = time.perf_counter() - t
    w_path = default_projection_path("taef2")
    if w_path is not None and Projection.load(w_path).out_dim == dim:
        emb = Embedder(encoder, Projection.load(w_path))
        vecs = emb.project(latents)
        how = f"shipped W {w_path.name} ({emb.projection_id})"
    else:
        rng = np.random.default_rng(seed)
        proj = rng.standard_normal((latents.shape[1], dim)).astype(np.float32) / np.sqrt(dim)
        vecs = l2_normalise(latents @ proj)
        how = f"no shipped W of {dim} outputs: seeded random projection {latents.shape[1]}->{dim}"
    return vecs.astype(np.float32), f"{len(photos)} photos, TAEF2 latents ({secs:.0f} s), {how}"


@dataclass
class Synth:
    """Gaussian fit (mean + rank-r covariance + isotropic residual) that generates unit vectors by chunk."""

    mean: np.ndarray
    basis: np.ndarray  # r x d, rows scaled by the component standard deviations
    residual_std: float
    seed: int

    @classmethod
    def fit(cls, x: np.ndarray | None, dim: int, rank: int, seed: int) -> Synth:
        rank = min(rank, dim)
        if x is None:
            # No real data: a decaying spectrum around a random mean (anisotropic, like learned embeddings).
            rng = np.random.default_rng(seed)
            mean = rng.standard_normal(dim).astype(np.float32) * 0.02
            q, _ = np.linalg.qr(rng.standard_normal((dim, rank)))
            std = 0.12 / np.sqrt(1 + np.arange(rank))
            return cls(mean, (q.T * std[:, None]).astype(np.float32), 0.02, seed)
        mean = x.mean(axis=0)
        c = x - mean
        _, s, vt = np.linalg.svd(c, full_matrices=False)
        r = min(rank, len(x) - 1)
        var = s**2 / max(len(x) - 1, 1)
        resid = max(float(var[r:].sum()) / x.shape[1], 1e-8)
        return cls(
            mean.astype(np.float32),
            (vt[:r] * np.sqrt(var[:r])[:, None]).astype(np.float32),
            float(np.sqrt(resid)),
            seed,
        )

    def chunk(self, index: int, size: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, index])
        z = rng.standard_normal((size, self.basis.shape[0]), dtype=np.float32) @ self.basis
        z += self.mean
        z += self.residual_std * rng.standard_normal(z.shape, dtype=np.float32)
        return z / np.linalg.norm(z, axis=1, keepdims=True)


class References:
    """The reference set: ``real`` rows first, then synthetic chunks, all addressable by chunk."""

    def __init__(self, real: np.ndarray | None, synth: Synth, n: int, chunk: int) -> None:
        self.real = real if real is not None else np.zeros((0, synth.mean.shape[0]), np.float32)
        self.synth, self.n, self.chunk_size = synth, n, chunk

    def chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        """(first id, vectors) in order; memory = one chunk."""
        start = 0
        if len(self.real):
            yield 0, self.real[: self.n]
            start = min(len(self.real), self.n)
        i = 0
        while start < self.n:
            size = min(self.chunk_size, self.n - start)
            yield start, self.synth.chunk(i, size)
            start += size
            i += 1

    def rows(self, ids: np.ndarray) -> np.ndarray:
        out = np.empty((len(ids), self.synth.mean.shape[0]), np.float32)
        for start, x in self.chunks():
            sel = (ids >= start) & (ids < start + len(x))
            out[sel] = x[ids[sel] - start]
        return out


def exact_topk(refs: References, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k (scores, ids) over all references, streamed chunk by chunk (float32 numpy)."""
    from id2_plugin.stores._faiss_index import topk_blocks

    return topk_blocks(q, refs.chunks(), k)
