"""YAML the way people write it by hand: no anchors, multi-line strings as ``|`` blocks."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        # Shared label dicts would otherwise come out as &id001 / *id001.
        return True


def _str(dumper: yaml.SafeDumper, text: str) -> yaml.Node:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _str)


def dump_all(docs: Iterable[Any]) -> str:
    """``docs`` as YAML documents separated by ``---``."""
    return yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, width=100)


__all__ = ["dump_all"]
