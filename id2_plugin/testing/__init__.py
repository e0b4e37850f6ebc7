"""Conformance checks for adapters and third-party embedders, stores and signal types.

Call them from your own tests; each raises ``AssertionError`` with a precise message on the first
violation::

    from id2_plugin.testing import check_latent_encoder, check_reference_store

    def test_my_encoder():
        check_latent_encoder(MyEncoder(device="cpu"))

    def test_my_store(tmp_path):
        check_reference_store(MyStore, tmp_path / "store")

Importing this package imports no heavy dependency (torch, faiss, threatexchange load only when a check
that needs them runs).
"""

from __future__ import annotations

from ..samples import synthetic_images
from ._encoders import check_embedder, check_latent_encoder
from ._images import centre_crop_jpeg, reupload_jpeg, reupload_pixels
from ._signals import check_signal_type
from ._stores import StoreFactory, check_reference_store, check_store_protocol

__all__ = [
    "StoreFactory",
    "centre_crop_jpeg",
    "check_embedder",
    "check_latent_encoder",
    "check_reference_store",
    "check_signal_type",
    "check_store_protocol",
    "reupload_jpeg",
    "reupload_pixels",
    "synthetic_images",
]
