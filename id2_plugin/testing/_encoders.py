"""Conformance checks for latent encoders and embedders (built-in or third-party)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..errors import MediaError
from ..samples import synthetic_images

if TYPE_CHECKING:
    from ..embedders.base import ImageEmbedder, LatentEncoder


def _fail(msg: str) -> None:
    raise AssertionError(msg)


def _bad_media() -> list[tuple[str, object]]:
    return [
        ("empty bytes", b""),
        ("bytes that are not an image", b"this is not an image" * 10),
        ("truncated PNG", b"\x89PNG\r\n\x1a\n" + b"\x00" * 16),
        ("zero-size array", np.zeros((0, 0, 3), np.uint8)),
        ("array with 2 channels", np.zeros((8, 8, 2), np.uint8)),
        ("float array with NaN", np.full((8, 8, 3), np.nan, np.float32)),
        ("a path that does not exist", "/nonexistent/definitely/missing.jpg"),
    ]


def check_latent_encoder(encoder: LatentEncoder, *, n_images: int = 3, atol: float | None = None) -> None:
    """Assert that ``encoder`` honours the :class:`~id2_plugin.LatentEncoder` contract.

    Checks: identity and shape metadata; ``normalise`` returns ``S x S x 3`` uint8 for any input size;
    ``encode_arrays`` returns ``N x latent_dim`` finite float32; results are deterministic (no sampling)
    and do not depend on the batch composition; different pictures give different latents; bad media
    raises :class:`~id2_plugin.MediaError`; wrongly shaped arrays raise ``ValueError``.

    Costs ``3 * n_images`` forward passes. ``atol`` (default 1e-3 x the latents' scale) bounds the
    batch-invariance difference; fp16 / GPU kernels may need a looser one.
    """
    ident = encoder.identity
    if not isinstance(ident, str) or not ident:
        _fail(f"identity must be a non-empty string, got {ident!r}")
    if encoder.identity != ident:
        _fail("identity changes between calls")
    shape = tuple(encoder.latent_shape)
    if len(shape) != 3 or any(int(d) < 1 for d in shape):
        _fail(f"latent_shape must be (channels, height, width), got {shape}")
    if encoder.latent_dim != int(np.prod(shape)):
        _fail(f"latent_dim {encoder.latent_dim} != prod(latent_shape {shape})")
    s = encoder.input_size
    # Inputs of assorted sizes and aspect ratios: normalise must bring all of them to S x S x 3 uint8.
    raw = synthetic_images(n_images, size=max(16, s // 2 + 7))
    raw[0] = np.ascontiguousarray(np.repeat(raw[0], 2, axis=1))  # non-square
    images = np.stack([encoder.normalise(r) for r in raw])
    if images.shape != (n_images, s, s, 3) or images.dtype != np.uint8:
        _fail(f"normalise must give {s}x{s}x3 uint8 arrays, got {images.shape} {images.dtype}")

    z = encoder.encode_arrays(images)
    if not isinstance(z, np.ndarray) or z.shape != (n_images, encoder.latent_dim):
        _fail(f"encode_arrays must return a {n_images} x {encoder.latent_dim} array, got {getattr(z, 'shape', z)}")
    if z.dtype != np.float32:
        _fail(f"encode_arrays must return float32, got {z.dtype}")
    if not np.isfinite(z).all():
        _fail("encode_arrays returned NaN or infinity")
    again = encoder.encode_arrays(images)
    if not np.array_equal(z, again):
        diff = float(np.abs(z - again).max())
        scale = float(np.abs(z).max()) or 1.0
        # Bit-exactness is not guaranteed on every backend, randomness (latent_dist.sample()) is not allowed.
        if diff > 1e-5 * scale:
            _fail(f"encoding is not deterministic (max difference {diff:g}); use the latent mean, not a sample")
    scale = float(np.abs(z).max()) or 1.0
    tol = atol if atol is not None else 1e-3 * scale
    single = np.concatenate([encoder.encode_arrays(images[i : i + 1]) for i in range(n_images)])
    diff = float(np.abs(single - z).max())
    if diff > tol:
        _fail(f"latents depend on the batch composition (max difference {diff:g} > {tol:g})")
    for i in range(n_images):
        for j in range(i + 1, n_images):
            if np.allclose(z[i], z[j], atol=tol):
                _fail(f"different pictures {i} and {j} give the same latent")

    for label, bad in _bad_media():
        try:
            encoder.normalise(bad)  # type: ignore[arg-type]
        except MediaError:
            continue
        except Exception as exc:
            _fail(f"normalise({label}) raised {type(exc).__name__} ({exc}); expected MediaError")
        _fail(f"normalise({label}) did not raise MediaError")
    try:
        encoder.encode_arrays(np.zeros((1, s + 8, s, 3), np.uint8))
    except ValueError:
        pass
    else:
        _fail("encode_arrays accepted an array of the wrong size; it must raise ValueError")


def check_embedder(embedder: ImageEmbedder, *, n_images: int = 3) -> None:
    """Assert the :class:`~id2_plugin.ImageEmbedder` contract: ``N x dim`` unit vectors, deterministic, identity.

    Also checks that ``embed`` (media in) and ``embed_arrays`` (normalised arrays in) agree and that
    ``embed_iter`` reports bad media per item instead of raising.
    """
    if not isinstance(embedder.identity, str) or not embedder.identity:
        _fail(f"identity must be a non-empty string, got {embedder.identity!r}")
    raw = synthetic_images(n_images, size=96)
    v = embedder.embed(raw)
    if v.shape != (n_images, embedder.dim) or v.dtype != np.float32:
        _fail(f"embed must return {n_images} x {embedder.dim} float32, got {v.shape} {v.dtype}")
    norms = np.linalg.norm(v, axis=1)
    if not np.allclose(norms, 1.0, atol=1e-4):
        _fail(f"embeddings must be L2-normalised, norms {norms}")
    arrays = np.stack([embedder.normalise(r) for r in raw])
    w = embedder.embed_arrays(arrays)
    if float(np.abs(v - w).max()) > 1e-4:
        _fail("embed(media) and embed_arrays(normalise(media)) disagree")
    items = list(embedder.embed_iter([raw[0], b"not an image", raw[1]]))
    if [it.index for it in items] != [0, 1, 2]:
        _fail("embed_iter must yield one item per input, in order")
    if items[1].error is None or items[1].vector is not None:
        _fail("embed_iter must report bad media as an item with .error set")
    if items[0].vector is None or float(np.abs(items[0].vector - v[0]).max()) > 1e-4:
        _fail("embed_iter vectors differ from embed()")
