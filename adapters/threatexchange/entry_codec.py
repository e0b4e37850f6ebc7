"""A small, pickle-free JSON codec for the metadata hosts attach to index entries.

ThreatExchange indexes carry arbitrary host metadata per signal: OpenMediaMatch uses integer content
ids, the ``threatexchange`` CLI ``[(collab_name, FetchedSignalMetadata), ...]`` where the metadata are
dataclasses holding enums and sets. Upstream indexes pickle them; we refuse pickle (loading a pickle
runs arbitrary code). This codec writes JSON values as they are and tags the rest:

* tuple, set, frozenset, dict with non-string keys -> ``{"__id2__": kind, "v": ...}``;
* ``enum.Enum`` members -> class path + value;
* dataclass instances -> class path + field values (rebuilt field by field, ``__init__`` is not run).

On decode a class path is only accepted if it names an ``Enum`` subclass or a dataclass; nothing else is
ever instantiated, so a crafted file cannot call arbitrary functions the way a pickle can.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import json
import math
from typing import Any

__all__ = ["decode", "dumps", "encode", "loads"]

_TAG = "__id2__"


def _class_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _resolve(path: str) -> type:
    module_name, _, qualname = path.partition(":")
    if not module_name or not qualname or "<locals>" in qualname:
        raise ValueError(f"invalid class path {path!r} in index entries")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"index entries refer to {path!r}, which cannot be imported ({exc})") from None
    if not isinstance(obj, type):
        raise ValueError(f"{path!r} in index entries is not a class")
    return obj


def encode(obj: Any) -> Any:
    """Python value -> JSON-compatible value (raises :class:`TypeError` for unsupported types)."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, enum.Enum):
        return {_TAG: "enum", "cls": _class_path(type(obj)), "v": encode(obj.value)}
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        if not math.isfinite(obj):
            return {_TAG: "float", "v": repr(obj)}
        return obj
    if isinstance(obj, list):
        return [encode(x) for x in obj]
    if isinstance(obj, tuple):
        return {_TAG: "tuple", "v": [encode(x) for x in obj]}
    if isinstance(obj, (set, frozenset)):
        items = [encode(x) for x in obj]
        # Sorted by their JSON text so equal sets always serialise to the same bytes.
        items.sort(key=lambda x: json.dumps(x, sort_keys=True))
        return {_TAG: "frozenset" if isinstance(obj, frozenset) else "set", "v": items}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and _TAG not in obj:
            return {k: encode(v) for k, v in obj.items()}
        return {_TAG: "dict", "v": [[encode(k), encode(v)] for k, v in obj.items()]}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = {f.name: encode(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        return {_TAG: "dataclass", "cls": _class_path(type(obj)), "f": fields}
    raise TypeError(
        f"cannot serialise index entry of type {type(obj).__module__}.{type(obj).__qualname__}: entries must "
        "be JSON values, tuples, sets, enums or dataclasses of those"
    )


def decode(obj: Any) -> Any:
    """Inverse of :func:`encode` (raises :class:`ValueError` on malformed or disallowed input)."""
    if isinstance(obj, list):
        return [decode(x) for x in obj]
    if not isinstance(obj, dict):
        return obj
    kind = obj.get(_TAG)
    if kind is None:
        return {k: decode(v) for k, v in obj.items()}
    if kind == "tuple":
        return tuple(decode(x) for x in obj["v"])
    if kind == "set":
        return {decode(x) for x in obj["v"]}
    if kind == "frozenset":
        return frozenset(decode(x) for x in obj["v"])
    if kind == "dict":
        return {decode(k): decode(v) for k, v in obj["v"]}
    if kind == "float":
        return float(obj["v"])
    if kind == "enum":
        cls = _resolve(obj["cls"])
        if not issubclass(cls, enum.Enum):
            raise ValueError(f"{obj['cls']!r} in index entries is not an Enum")
        return cls(decode(obj["v"]))
    if kind == "dataclass":
        cls = _resolve(obj["cls"])
        if not dataclasses.is_dataclass(cls):
            raise ValueError(f"{obj['cls']!r} in index entries is not a dataclass")
        names = {f.name for f in dataclasses.fields(cls)}
        values = obj["f"]
        if set(values) != names:
            raise ValueError(f"fields of {obj['cls']!r} changed: stored {sorted(values)}, class has {sorted(names)}")
        inst = object.__new__(cls)
        for name, value in values.items():
            # object.__setattr__ also works for frozen dataclasses; __init__/__post_init__ are not re-run.
            object.__setattr__(inst, name, decode(value))
        return inst
    raise ValueError(f"unknown tag {kind!r} in index entries")


def dumps(obj: Any) -> str:
    return json.dumps(encode(obj), separators=(",", ":"), allow_nan=False)


def loads(text: str | bytes) -> Any:
    return decode(json.loads(text))
