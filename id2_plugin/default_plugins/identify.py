"""Built-in ``id2_identify_origin``: embed and search the reference store."""

from __future__ import annotations

from typing import Any

from ..hookspecs import hookimpl
from ..search import IdentifyContext, search
from ..types import OriginReport


@hookimpl(trylast=True)
def id2_identify_origin(media: Any, context: IdentifyContext) -> OriginReport:
    return search(media, context)
