"""Warm-up: build the model and run one forward pass in the host's start-up, not in its first request."""

from __future__ import annotations

import logging
import sys
import typing as t

from .settings import cosine_threshold_in_use, embedder_in_use, example_vectors
from .signal_format import identity_digest

__all__ = ["warm_up"]

logger = logging.getLogger(__name__)


def warm_up(app: t.Any = None) -> dict[str, t.Any]:
    """Build the embedder and run one forward pass now; call it from OMM's ``APP_HOOK`` beside OMM's own
    ``on_flask_ready`` (README, "OpenMediaMatch"), with ``dictConfig(..., disable_existing_loggers=False)``
    so that its "id2 ready" line is logged.

    The first hash otherwise pays the model load (5-20 s) inside a request, close to gunicorn's 30 s
    worker timeout. ``app`` (the Flask app OMM passes to its hook) is not used. Returns what an operator
    wants in the start-up log: identity, digest, dimension, threshold and its source, torch threads.
    """
    emb = embedder_in_use()
    example_vectors(emb)
    threshold, source = cosine_threshold_in_use()
    info = {
        "identity": emb.identity,
        "digest": identity_digest(emb.identity),
        "dim": emb.dim,
        "cosine_threshold": threshold,
        "threshold_source": source,
    }
    if "torch" in sys.modules:
        info["torch_threads"] = sys.modules["torch"].get_num_threads()
    logger.info("id2 ready: %s", info)
    return info
