"""Where model weights come from: config path, then ``$ID2_MODELS_DIR``, then ``../shared/models``, then a
hub download (only for users with network access; tests never reach this step).
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ModelNotFoundError

#: Hub repositories used as the last resort, per model folder name.
HUB_REPOS: dict[str, str] = {"taef2": "madebyollin/taef2"}


def candidate_dirs(name: str) -> list[Path]:
    """Local folders searched for model ``name``, in order."""
    dirs: list[Path] = []
    env = os.environ.get("ID2_MODELS_DIR")
    if env:
        dirs.extend(Path(p) / name for p in env.split(os.pathsep) if p)
    dirs.append(Path.cwd() / ".." / "shared" / "models" / name)
    # A development checkout keeps shared/ beside the project folder, wherever the command runs from.
    dirs.append(Path(__file__).resolve().parent.parent.parent / "shared" / "models" / name)
    return dirs


def resolve_model_file(
    name: str, filename: str, configured: str | os.PathLike | None = None, *, allow_download: bool = True
) -> Path:
    """Find ``filename`` of model ``name``.

    ``configured`` may be a file or a folder containing ``filename``; it wins when given (and must exist).
    """
    if configured:
        p = Path(configured).expanduser()
        if p.is_dir():
            p = p / filename
        if p.is_file():
            return p
        raise ModelNotFoundError(f"configured weights for {name!r} not found: {p}")
    for d in candidate_dirs(name):
        if (d / filename).is_file():
            return (d / filename).resolve()
    searched = ", ".join(str(d) for d in candidate_dirs(name))
    if allow_download and os.environ.get("ID2_OFFLINE", "") not in ("1", "true") and name in HUB_REPOS:
        try:
            from huggingface_hub import hf_hub_download

            return Path(hf_hub_download(HUB_REPOS[name], filename))
        except Exception as exc:  # no network, no hub client, repo moved
            raise ModelNotFoundError(
                f"{filename} of model {name!r} not found locally (searched {searched}) and the hub download from "
                f"{HUB_REPOS[name]} failed: {exc}. Set embedder.weights or ID2_MODELS_DIR."
            ) from None
    raise ModelNotFoundError(
        f"{filename} of model {name!r} not found (searched {searched}); set embedder.weights or ID2_MODELS_DIR"
    )
