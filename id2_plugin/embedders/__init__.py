"""Embedders: VAE latent encoders, the linear projection W, and the Embedder that chains them."""

from .base import Embedder, EmbedItem, LatentEncoder, Projection, l2_normalise, select_device

__all__ = ["EmbedItem", "Embedder", "LatentEncoder", "Projection", "l2_normalise", "select_device"]
