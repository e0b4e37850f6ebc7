"""Provenance of a robustness report: versions, model identities, inputs digest, seed, command, machine."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from id2_plugin import __version__
from id2_plugin.embedders.base import Embedder
from id2_plugin.media import sha256_file, sha256_file_or_none

from .datasets import RobustnessSet


def _git_commit() -> str | None:
    """The commit of the checkout the package runs from (None when installed from a wheel or git is absent)."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def provenance(
    *, embedder: Embedder | None, seed: int, dataset: RobustnessSet, command: Sequence[str] | None = None
) -> dict[str, Any]:
    """Who/what/where produced a report: versions, model identities, inputs digest, seed, command, machine."""
    torch_version = None
    if "torch" in sys.modules or embedder is not None:
        try:
            import torch

            torch_version = torch.__version__
        except ImportError:
            pass
    w_sha = w_path = None
    latent = embedder.latent_part() if embedder is not None else None
    w = latent.projection if latent is not None else None
    if w is not None and w.source:
        w_path = w.source
        w_sha = sha256_file(w_path)
    return {
        "package": "id2-plugin",
        "version": __version__,
        "embedder": latent.encoder.identity if latent is not None else None,
        "embedder_identity": embedder.identity if embedder is not None else None,
        "default_method": embedder.name if embedder is not None else None,
        "encoder_weights_sha256": getattr(latent.encoder, "weights_digest", None) if latent is not None else None,
        "projection": latent.projection_id if latent is not None else None,
        "projection_path": w_path,
        "projection_sha256": w_sha,
        # Content digest of W (weights + pool), defined even for an in-memory W that has no file.
        "projection_digest": w.digest if w is not None else None,
        "manifest_digest": dataset.manifest_digest,
        "seed": int(seed),
        "command": shlex.join(command if command is not None else sys.argv),
        "git_commit": _git_commit(),
        "queries": [{"path": str(q), "sha256": sha256_file_or_none(q)} for q in dataset.query_paths],
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "torch": torch_version,
            "numpy": np.__version__,
        },
    }
