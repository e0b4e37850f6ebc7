"""Embedders: VAE latent encoders, the linear projection W, the Embedder that chains them, SSCD and the fused signal."""

from .base import Embedder, EmbedItem, ImageEmbedder, LatentEncoder, Projection, fit_arrays, l2_normalise, select_device
from .fused import FusedEmbedder, FusionFit

__all__ = [
    "EmbedItem",
    "Embedder",
    "FusedEmbedder",
    "FusionFit",
    "ImageEmbedder",
    "LatentEncoder",
    "Projection",
    "fit_arrays",
    "l2_normalise",
    "select_device",
]
