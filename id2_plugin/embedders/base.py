"""Embedder base classes: a VAE :class:`LatentEncoder`, the learned linear :class:`Projection` W, and the
:class:`Embedder` that chains them (normalise media -> latent -> W -> L2-normalise).

Subclasses of :class:`LatentEncoder` write only :meth:`LatentEncoder._encode_batch`; media normalisation,
batching, device placement, ``inference_mode`` and error reporting are done here once.
"""

from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._lazy import require
from ..errors import ConfigError, MediaError
from ..media import MediaLike, MediaLimits, ResizePolicy, to_rgb_array

if TYPE_CHECKING:
    from .._batching import BatchSizer


def select_device(device: str = "auto", dtype: str = "auto") -> tuple[Any, Any]:
    """Pick the torch device and dtype: CUDA with fp16 when present, else CPU with fp32.

    ``device`` is ``auto``, ``cpu``, ``cuda`` or ``cuda:N``; ``dtype`` is ``auto``, ``float32``,
    ``float16`` or ``bfloat16``. Asking for CUDA on a machine without it is a :class:`ConfigError`.
    """
    torch = require("torch")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"embedder.device={device!r} but CUDA is not available on this machine; use 'auto' or 'cpu'")
    if device not in ("cpu",) and not device.startswith("cuda") and device != "mps":
        raise ConfigError(f"embedder.device={device!r} is not one of auto, cpu, cuda, cuda:N, mps")
    if dtype == "auto":
        dtype = "float16" if device.startswith("cuda") else "float32"
    try:
        tdtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    except KeyError:
        raise ConfigError(f"embedder.dtype={dtype!r} is not one of auto, float32, float16, bfloat16") from None
    return torch.device(device), tdtype


@dataclass
class EmbedItem:
    """One streamed result of :meth:`Embedder.embed_iter`: a vector, or the error that skipped it."""

    index: int
    source: Any
    vector: np.ndarray | None = None
    error: MediaError | None = None


class LatentEncoder(ABC):
    """The encoder half of a diffusion VAE, producing a flattened deterministic latent per image.

    Parameters are explicit (no config object): ``input_size`` is the square side the image is resized
    to (the paper uses 256), ``batch_size`` the number of images per forward pass.
    """

    #: short registry name, e.g. ``taef2`` or ``sd-vae``
    name: str = "latent-encoder"

    def __init__(
        self,
        *,
        input_size: int = 256,
        batch_size: int = 16,
        device: str = "auto",
        dtype: str = "auto",
        resize_policy: ResizePolicy = "squash",
        limits: MediaLimits | None = None,
    ) -> None:
        if input_size % 8 or input_size < 64:
            raise ConfigError(f"embedder.input_size={input_size} must be a multiple of 8 and >= 64")
        if batch_size < 1:
            raise ConfigError(f"embedder.batch_size={batch_size} must be >= 1")
        self.input_size = input_size
        self.batch_size = batch_size
        self.resize_policy: ResizePolicy = resize_policy
        self.limits = limits or MediaLimits()
        self.device, self.dtype = self._select_device(device, dtype)

    def _select_device(self, device: str, dtype: str) -> tuple[Any, Any]:
        """Where and in what dtype the model runs; torch's by default (an ONNX Runtime encoder overrides it)."""
        return select_device(device, dtype)

    # -- identity ---------------------------------------------------------------------------------
    @property
    @abstractmethod
    def weights_digest(self) -> str:
        """sha256 of the weights (first 16 hex digits are used in identities)."""

    @property
    @abstractmethod
    def latent_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the latent at ``input_size``."""

    @property
    def latent_dim(self) -> int:
        c, h, w = self.latent_shape
        return c * h * w

    @property
    def identity(self) -> str:
        """Stable id of what produces the latent: name, weights, input size and resize policy."""
        return f"{self.name}@{self.weights_digest[:16]}/{self.input_size}/{self.resize_policy}"

    # -- encoding ---------------------------------------------------------------------------------
    def normalise(self, source: MediaLike) -> np.ndarray:
        """Public edge: any media -> ``input_size`` square RGB uint8 array (raises :class:`MediaError`)."""
        return to_rgb_array(source, (self.input_size, self.input_size), policy=self.resize_policy, limits=self.limits)

    def encode_arrays(self, images: np.ndarray) -> np.ndarray:
        """Encode normalised ``N x S x S x 3`` uint8 images to ``N x latent_dim`` float32 latents."""
        if images.ndim != 4 or images.shape[1:] != (self.input_size, self.input_size, 3):
            raise ValueError(f"expected N x {self.input_size} x {self.input_size} x 3, got {images.shape}")
        out = np.empty((len(images), self.latent_dim), dtype=np.float32)
        for start in range(0, len(images), self.batch_size):
            chunk = np.ascontiguousarray(images[start : start + self.batch_size])
            out[start : start + len(chunk)] = self._encode_chunk(chunk).reshape(len(chunk), -1)
        return out

    def _encode_chunk(self, chunk: np.ndarray) -> np.ndarray:
        """One batch of contiguous uint8 NHWC images -> float32 latents, with torch and :meth:`_encode_batch`."""
        torch = require("torch")
        with torch.inference_mode():
            # torch.from_numpy refuses read-only arrays: copy only those.
            x = torch.from_numpy(chunk if chunk.flags.writeable else chunk.copy()).to(self.device)
            # [-1, 1] NCHW is the diffusers convention for every VAE encoder.
            x = x.permute(0, 3, 1, 2).to(self.dtype).div(127.5).sub(1.0)
            x = x.contiguous(memory_format=torch.channels_last)
            return self._encode_batch(x).float().cpu().numpy()  # type: ignore[no-any-return]

    def encode(self, sources: Sequence[MediaLike]) -> np.ndarray:
        """Normalise and encode; raises :class:`MediaError` on the first bad input."""
        return (
            self.encode_arrays(np.stack([self.normalise(s) for s in sources]))
            if len(sources)
            else np.zeros((0, self.latent_dim), np.float32)
        )

    @abstractmethod
    def _encode_batch(self, x: Any) -> Any:
        """Encode a ``B x 3 x S x S`` tensor in [-1, 1] (on ``self.device``/``self.dtype``) to ``B x C x h x w``."""


@dataclass
class Projection:
    """The learned linear map W (``in_dim x out_dim``) applied to the (optionally pooled) latent.

    Stored as safetensors: tensor ``weight`` plus string metadata (``embedder``, ``latent_shape``,
    ``pool``, ``out_dim``, training provenance). ``pool`` > 1 average-pools the latent spatially before W,
    which keeps W small enough to ship.
    """

    weight: np.ndarray
    metadata: dict[str, str] = field(default_factory=dict)
    pool: int = 1
    source: str | None = None
    #: subtracted from the pooled latent before W (centring); None = no centring
    mean: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.weight = np.ascontiguousarray(self.weight, dtype=np.float32)
        if self.weight.ndim != 2:
            raise ConfigError(f"projection weight must be 2-D, got shape {self.weight.shape}")
        if self.mean is not None:
            self.mean = np.ascontiguousarray(self.mean, dtype=np.float32).ravel()
            if self.mean.shape != (self.in_dim,):
                raise ConfigError(f"projection mean has {self.mean.size} values but W has {self.in_dim} inputs")
        self.metadata = {str(k): str(v) for k, v in self.metadata.items()}
        self.metadata.setdefault("pool", str(self.pool))
        self.metadata.setdefault("out_dim", str(self.out_dim))

    @property
    def in_dim(self) -> int:
        return int(self.weight.shape[0])

    @property
    def out_dim(self) -> int:
        return int(self.weight.shape[1])

    @cached_property
    def digest(self) -> str:
        # Hashed once: W is ~100 MB, and every report names the embedder's identity (hashing W for each query
        # was half of an unrelated query's CPU). Nothing reassigns a Projection's arrays after construction.
        h = hashlib.sha256(self.weight.tobytes())
        h.update(json.dumps({"pool": self.pool}, sort_keys=True).encode())
        if self.mean is not None:
            h.update(self.mean.tobytes())
        return h.hexdigest()

    @property
    def identity(self) -> str:
        return f"W@{self.digest[:16]}/{self.in_dim}x{self.out_dim}/pool{self.pool}"

    @classmethod
    def load(cls, path: str | os.PathLike) -> Projection:
        safetensors_numpy = require("safetensors.numpy")
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"projection file not found: {path}")
        try:
            tensors = safetensors_numpy.load_file(str(path))
            with open(path, "rb") as f:
                header_len = int.from_bytes(f.read(8), "little")
                header = json.loads(f.read(header_len))
        except Exception as exc:
            raise ConfigError(f"cannot read projection {path}: {exc}") from None
        if "weight" not in tensors:
            raise ConfigError(f"projection {path} has no 'weight' tensor (found {sorted(tensors)})")
        meta = header.get("__metadata__", {}) or {}
        mean = tensors["mean"].astype(np.float32) if "mean" in tensors else None
        return cls(
            weight=tensors["weight"].astype(np.float32),
            metadata=meta,
            pool=int(meta.get("pool", 1)),
            source=str(path),
            mean=mean,
        )

    def save(self, path: str | os.PathLike, dtype: str = "float32") -> Path:
        safetensors_numpy = require("safetensors.numpy")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        meta = dict(self.metadata, pool=str(self.pool), out_dim=str(self.out_dim), in_dim=str(self.in_dim))
        tensors = {"weight": self.weight.astype(dtype)}
        if self.mean is not None:  # float32 always: the mean is large next to W's columns and small in bytes
            tensors["mean"] = self.mean
        safetensors_numpy.save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)
        return path

    def pool_latents(self, latents: np.ndarray, latent_shape: tuple[int, int, int]) -> np.ndarray:
        """Average-pool flattened ``N x (C*H*W)`` latents by ``pool`` along H and W."""
        if self.pool == 1:
            return latents
        c, h, w = latent_shape
        p = self.pool
        if h % p or w % p:
            raise ConfigError(f"latent {latent_shape} is not divisible by pool={p}")
        z = latents.reshape(len(latents), c, h // p, p, w // p, p).mean(axis=(3, 5))
        return z.reshape(len(latents), -1)

    def apply(self, latents: np.ndarray, latent_shape: tuple[int, int, int]) -> np.ndarray:
        z = self.pool_latents(latents, latent_shape)
        if z.shape[1] != self.in_dim:
            raise ConfigError(
                f"projection expects {self.in_dim}-dim inputs but the latent {latent_shape} pooled by "
                f"{self.pool} has {z.shape[1]}: W was trained for another embedder or input size"
            )
        return (z - self.mean) @ self.weight if self.mean is not None else z @ self.weight


def l2_normalise(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)


def fit_arrays(images: np.ndarray, size: int) -> np.ndarray:
    """``N x s x s x 3`` uint8 images resized (bicubic) to ``size`` squares; returned as is when ``s == size``.

    Lets signals with different input sizes share one normalised image (a fused embedder normalises once,
    at its largest input size, and each signal takes its own size from that).
    """
    if images.ndim != 4 or images.shape[3] != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"expected N x S x S x 3 images, got {images.shape}")
    if images.shape[1] == size:
        return images
    from PIL import Image

    out = np.empty((len(images), size, size, 3), np.uint8)
    for i, im in enumerate(images):
        out[i] = np.asarray(
            Image.fromarray(np.ascontiguousarray(im)).resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
        )
    return out


class ImageEmbedder(ABC):
    """Media -> L2-normalised vector, the contract every store, adapter and evaluation relies on.

    Subclasses write :meth:`normalise` (any media -> the square RGB array the model takes) and
    :meth:`embed_arrays` (a batch of such arrays -> vectors); listing, streaming and error reporting are
    done here once. :attr:`signals` names the slices of the vector that come from separate signals (one
    slice for a single signal), so a match can report each signal's cosine.
    """

    #: signal name as reported in matches and evaluations, e.g. ``id2``, ``vae_raw``, ``sscd``, ``fused``
    name: str = "embedder"
    #: images per forward pass in :meth:`embed_iter`
    batch_size: int = 16
    #: how :meth:`normalise` makes the image square
    resize_policy: ResizePolicy = "squash"

    @property
    @abstractmethod
    def identity(self) -> str:
        """What a store records and checks: everything that changes the vectors."""

    @property
    @abstractmethod
    def dim(self) -> int:
        """Vector dimension."""

    @property
    @abstractmethod
    def input_size(self) -> int:
        """Side of the square array :meth:`normalise` returns."""

    @abstractmethod
    def normalise(self, source: MediaLike) -> np.ndarray:
        """Public edge: any media -> ``input_size`` square RGB uint8 array (raises :class:`MediaError`)."""

    @abstractmethod
    def embed_arrays(self, images: np.ndarray) -> np.ndarray:
        """``N x S x S x 3`` uint8 arrays (any ``S``; resized when it is not ``input_size``) -> ``N x dim`` vectors."""

    @property
    def projection_id(self) -> str | None:
        """Identity of the learned W inside this embedding, if any (reported with every answer)."""
        return None

    @property
    def signals(self) -> dict[str, tuple[int, int, float]]:
        """Signal name -> (start, stop, weight) of its slice; the slice's dot product / weight is its cosine."""
        return {self.name: (0, self.dim, 1.0)}

    def latent_part(self) -> Embedder | None:
        """The VAE (+ W) signal inside this embedder: itself, one of a composite's parts, or None."""
        return None

    #: whether crops of a query are worth embedding with this signal (a copy detector trained on crops);
    #: a composite embedder re-embeds only such signals for query windows
    window_signal: bool = False

    def embed_windows(self, windows: np.ndarray, whole: np.ndarray) -> np.ndarray:
        """Vectors of query windows (``N x s x s x 3`` uint8 crops); ``whole`` is the vector of the whole query
        each window was cut from (one row, or one per window), from which a composite embedder keeps the
        slices of its other signals."""
        return self.embed_arrays(windows)

    def signal_scores(self, query: np.ndarray, references: np.ndarray) -> list[dict[str, float]]:
        """Each signal's cosine between one query vector and each row of ``references``."""
        out: list[dict[str, float]] = [{} for _ in range(len(references))]
        for name, (a, b, w) in self.signals.items():
            cos = references[:, a:b] @ query[a:b] / max(w, 1e-12)
            for row, c in zip(out, cos):
                row[name] = round(float(c), 6)
        return out

    def embed(self, sources: Sequence[MediaLike]) -> np.ndarray:
        """Embed a list of media; raises :class:`MediaError` on the first bad input."""
        if not len(sources):
            return np.zeros((0, self.dim), np.float32)
        return self.embed_arrays(np.stack([self.normalise(s) for s in sources]))

    def embed_iter(
        self,
        sources: Iterable[MediaLike],
        *,
        batch_size: int | str | BatchSizer | None = None,
        progress: bool | str = False,
        total: int | None = None,
        workers: int = 2,
    ) -> Iterator[EmbedItem]:
        """Stream embeddings in input order; bad media yields an item with ``error`` set instead of raising.

        ``batch_size``: an int, ``auto`` or a shared :class:`~id2_plugin._batching.BatchSizer` (default:
        :attr:`batch_size`). Decoding runs in ``workers`` threads overlapped with the model, at most two
        batches ahead, so memory stays bounded however many sources there are.
        """
        from .._batching import pipelined
        from .._progress import progress_bar

        def model(_: list[Any], images: list[np.ndarray]) -> np.ndarray:
            return self.embed_arrays(np.stack(images))

        with progress_bar(progress, total, "embedding") as bar:
            for done in pipelined(
                sources, self.normalise, model, batch_size=batch_size or self.batch_size, workers=workers
            ):
                yield EmbedItem(done.index, done.item, vector=done.output, error=done.error)
                bar.update(1)


class Embedder(ImageEmbedder):
    """Media -> L2-normalised embedding: ``normalise((pool(latent_encoder(media)) - mean) @ W)``.

    Without a projection the raw flattened latent is returned, L2-normalised (the paper's
    "VAE embedding" baseline).
    """

    def __init__(self, encoder: LatentEncoder, projection: Projection | None = None) -> None:
        self.encoder = encoder
        self.projection = projection
        self.name = "id2" if projection is not None else "vae_raw"
        self.batch_size = encoder.batch_size
        if projection is not None:
            expected = projection.metadata.get("embedder_name")
            if expected and expected != encoder.name:
                raise ConfigError(
                    f"projection {projection.source or ''} was trained for embedder {expected!r}, not {encoder.name!r}"
                )
            # Validates dimensions eagerly so a wrong W fails at start-up, not on the first query.
            projection.apply(np.zeros((1, encoder.latent_dim), np.float32), encoder.latent_shape)

    @property
    def dim(self) -> int:
        return self.projection.out_dim if self.projection else self.encoder.latent_dim

    @property
    def input_size(self) -> int:
        return self.encoder.input_size

    @property
    def projection_id(self) -> str | None:
        return self.projection.identity if self.projection else None

    def latent_part(self) -> Embedder:
        return self

    @property
    def resize_policy(self) -> ResizePolicy:
        return self.encoder.resize_policy

    @property
    def identity(self) -> str:
        """What a store records and checks: encoder identity plus W identity (or ``raw``)."""
        return f"{self.encoder.identity}+{self.projection_id or 'raw'}"

    def normalise(self, source: MediaLike) -> np.ndarray:
        return self.encoder.normalise(source)

    def project(self, latents: np.ndarray) -> np.ndarray:
        """Latents -> L2-normalised embeddings (applies W when present)."""
        z = latents if self.projection is None else self.projection.apply(latents, self.encoder.latent_shape)
        return l2_normalise(z)

    def embed_arrays(self, images: np.ndarray) -> np.ndarray:
        """Embed already-normalised ``N x S x S x 3`` uint8 arrays."""
        return self.project(self.encoder.encode_arrays(fit_arrays(images, self.input_size)))
