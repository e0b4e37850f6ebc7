"""Built-in ``id2_identify_origin``: embed the query and search the reference store (runs last)."""

from __future__ import annotations

from typing import Any

from ..hookspecs import hookimpl
from ..identify_context import IdentifyContext
from ..search import search
from ..types import OriginReport


@hookimpl(trylast=True)
def id2_identify_origin(media: Any, context: IdentifyContext) -> OriginReport:
    return search(media, context)
