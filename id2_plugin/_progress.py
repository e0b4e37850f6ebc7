"""One progress-bar idiom: ``progress`` is False (a disabled bar), True (the default label) or a label."""

from __future__ import annotations

from typing import Any


def progress_bar(progress: bool | str, total: int | None, default: str, unit: str = "img", **kwargs: Any) -> Any:
    """A tqdm bar that is disabled (callers never branch on it) when ``progress`` is false."""
    from tqdm import tqdm

    desc = progress if isinstance(progress, str) else default
    return tqdm(total=total, desc=desc, unit=unit, disable=not progress, **kwargs)
