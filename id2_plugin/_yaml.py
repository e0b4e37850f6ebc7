"""YAML for configuration files and ``--set`` values: PyYAML's safe loader, minus what only attacks need.

``yaml.safe_load`` constructs no objects, but still expands aliases (a "billion laughs" document of a few
hundred bytes grows to gigabytes: over 60 s and 6 GB measured inside ``store.index_options``), recurses once
per nesting level (1,000 levels raise RecursionError) and lets a repeated key silently replace the first.
A configuration needs none of these: aliases are refused, nesting is capped and repeated keys are errors.
"""

from __future__ import annotations

from typing import Any

import yaml

from .errors import ConfigError

#: nesting levels of mappings / lists; the deepest real configuration key is 3 levels down
MAX_DEPTH = 32


class _ConfigLoader(yaml.SafeLoader):
    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise ConfigError(
                f"not accepted: line {mark.line + 1} uses a YAML alias (*name); configuration refuses them"
            )
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise ConfigError(f"not accepted: line {mark.line + 1} is nested more than {MAX_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) or key is None:
                if key in seen:
                    line = key_node.start_mark.line + 1
                    raise ConfigError(f"not accepted: line {line} repeats the key {key!r} (one value would be lost)")
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """Parse ``text``; :class:`ConfigError` ("not valid YAML: ..." / "not accepted: ...") for invalid YAML,
    aliases, deep nesting or repeated keys."""
    try:
        return yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {' '.join(str(exc).split())}") from None
