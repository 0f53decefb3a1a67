"""A config file read with its places: every mapping in it knows its file and each key's
line (``Located``), so a mistake is named where it is (``fleet.yaml, line 3: unknown
setting 'modle' in fleet (did you mean 'model'?)``); a YAML syntax error names the file,
line and column; an unknown section lists the known ones.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml

from gpufleet.errors import ConfigError

#: The sections of a config file, one per part (each read by that part only).
SECTIONS = ("fleet", "worker", "router", "client", "ray", "bench", "monitor")


class Located(dict[str, Any]):
    """A mapping read from a YAML file that remembers where: the file, each key's line.

    ``where`` names it for messages (``fleet``, ``fleet.pools.fast``).
    """

    source: str = ""
    where: str = ""
    lines: dict[str, int]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lines = {}

    def at(self, key: str) -> str:
        """``fleet.yaml, line 3: `` for ``key`` (empty when not known)."""
        line = self.lines.get(key)
        if not self.source:
            return ""
        return f"{self.source}, line {line}: " if line else f"{self.source}: "

    def part(self, key: str, where: str) -> Located:
        """The mapping under ``key`` as its own :class:`Located`, named ``where``."""
        inner = self[key]
        out = Located(inner)
        if isinstance(inner, Located):
            out.lines = dict(inner.lines)
        out.source, out.where = self.source, where
        return out

    def without(self, key: str) -> Located:
        """A copy without ``key``, still located."""
        out = Located({k: v for k, v in self.items() if k != key})
        out.lines = {k: v for k, v in self.lines.items() if k != key}
        out.source, out.where = self.source, self.where
        return out


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` whose mappings are :class:`Located`."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> Any:
    data = Located()
    yield data
    data.update({str(k): v for k, v in loader.construct_mapping(node).items()})
    data.source = loader.name
    data.lines = {str(k.value): k.start_mark.line + 1 for k, _ in node.value}


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def did_you_mean(word: str, choices: Any) -> str:
    """`` (did you mean 'model'?)`` for the closest of ``choices``, else empty."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def read_yaml(path: str | Path | None) -> dict[str, Any]:
    """Read a YAML config file into a dict (empty when ``path`` is None).

    Every mapping in it is :class:`Located`: a section knows its file and its keys' lines.

    Raises:
        ConfigError: the file cannot be read, is not YAML, or has an unknown section.
    """
    if path is None:
        return {}
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror}") from exc
    loader = _Loader(text)
    loader.name = str(p)  # marks (and so errors) name the file, not "<unicode string>"
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}{_one_line(exc)}") from None
    finally:
        loader.dispose()
    if data is None:
        return {}
    if not isinstance(data, Located):
        raise ConfigError(f"config file {p} must hold a mapping at the top level")
    for name in data:
        if name not in SECTIONS:
            raise ConfigError(
                f"{data.at(name)}unknown section {name!r}{did_you_mean(name, SECTIONS)}; "
                f"sections: {', '.join(SECTIONS)}"
            )
        if isinstance(data[name], dict):
            data[name] = data.part(name, name)
    return data


def _one_line(exc: yaml.YAMLError) -> str:
    """``, line 3, column 7: not valid YAML: what`` (to follow the file's name)."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        what = " ".join(str(x) for x in (exc.context, exc.problem) if x)
        return f", line {mark.line + 1}, column {mark.column + 1}: not valid YAML: {what}"
    return f": not valid YAML: {' '.join(str(exc).split())}"


__all__ = ["SECTIONS", "Located", "did_you_mean", "read_yaml"]
