"""How a setting is spelled on the command line: its option names, the metavar ``--help``
shows for what it takes, the default it shows, and its help text (see ``_options``).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any, Literal

from gpufleet.config._setting import Flag, default_of

#: Choices wider than this are listed in the help text instead (``NAME`` as metavar).
_MAX_CHOICES_WIDTH = 30
_UNITS = (
    ("_ms", "MS"),
    ("_mb", "MB"),
    ("_gb", "GB"),
    ("_kb", "KB"),
    ("_h", "HOURS"),
    ("_percent", "PERCENT"),
)
_SECONDS = re.compile(r"(^|_)(timeout|backoff|deadline|duration|interval|ttl|s)$")
#: Plain words for what a string setting takes, by the last word of its name.
_WORDS = {
    "host": "HOST",
    "hosts": "HOST",
    "port": "PORT",
    "file": "PATH",
    "dir": "PATH",
    "path": "PATH",
    "url": "URL",
    "token": "TOKEN",
}


def strip_optional(tp: Any) -> Any:
    """``X`` for ``X | None``; any other type as it is."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def kind_of(tp: Any) -> Literal["value", "list", "pairs", "switch"]:
    """How a setting of type ``tp`` is given: one value, repeated, ``K=V`` pairs, on/off."""
    inner = strip_optional(tp)
    origin = typing.get_origin(inner)
    if inner is bool:
        return "switch"
    if origin is tuple:
        return "list"
    if origin is dict:
        return "pairs"
    return "value"


def option_names(field: dataclasses.Field[Any], tp: Any, flag: Flag) -> tuple[str, ...]:
    """The option names of ``field`` (its :class:`Flag`'s, else from its name)."""
    if flag.names:
        return flag.names
    name = field.name.removesuffix("_s") if field.name.endswith("_s") else field.name
    if kind_of(tp) in ("list", "pairs"):
        name = name.removesuffix("s")
    dashed = name.replace("_", "-")
    if kind_of(tp) == "switch":
        return (f"--{dashed}/--no-{dashed}",)
    return (f"--{dashed}",)


def choices(tp: Any) -> tuple[str, ...]:
    """The values a ``Literal`` setting takes (empty for any other type)."""
    inner = strip_optional(tp)
    if typing.get_origin(inner) is Literal:
        return tuple(str(a) for a in typing.get_args(inner))
    return ()


def metavar(name: str, tp: Any, flag: Flag) -> str:
    """The word ``--help`` shows for what setting ``name`` of type ``tp`` takes."""
    if flag.metavar is not None:
        return flag.metavar
    kind = kind_of(tp)
    if kind == "switch":
        return ""
    listed = choices(tp)
    if listed:
        shown = "[" + "|".join(listed) + "]"
        return shown if len(shown) <= _MAX_CHOICES_WIDTH else "NAME"
    for suffix, word in _UNITS:
        if name.endswith(suffix):
            return word
    last = name.rsplit("_", 1)[-1]
    if kind in ("list", "pairs"):
        last = last.removesuffix("s")
    inner = strip_optional(tp)
    if last in _WORDS:
        return _WORDS[last]
    if inner is float and _SECONDS.search(name):
        return "SECONDS"
    if inner in (int, float):
        return "N"
    return last.upper()


def shown_default(field: dataclasses.Field[Any], names: tuple[str, ...]) -> str | None:
    """The default ``--help`` shows for ``field``; None when there is none worth showing."""
    value = default_of(field)
    if value is dataclasses.MISSING or value is None or value in ((), {}, ""):
        return None
    if isinstance(value, bool):  # the form that sets it: isolate-failures, no-retry-lost
        on, _, off = names[0].partition("/")
        return (on if value else off).lstrip("-") or None
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def help_text(flag: Flag, tp: Any) -> str:
    """The help ``--help`` shows, with the choices when the metavar cannot hold them."""
    listed = choices(tp)
    if listed and metavar("", tp, flag) == "NAME":
        return f"{flag.help.rstrip('.')}. Choices: {', '.join(listed)}."
    return flag.help


__all__ = [
    "choices",
    "help_text",
    "kind_of",
    "metavar",
    "option_names",
    "shown_default",
    "strip_optional",
]
