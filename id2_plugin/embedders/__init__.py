"""Embedders: VAE latent encoders, the linear projection W, and the Embedder that chains them."""

from .base import Embedder, EmbedItem, ImageEmbedder, LatentEncoder, Projection, fit_arrays, l2_normalise, select_device

__all__ = ["EmbedItem", "Embedder", "ImageEmbedder", "LatentEncoder", "Projection", "fit_arrays", "l2_normalise", "select_device"]
