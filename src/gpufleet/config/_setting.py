"""A setting declared once: its field carries how it shows on the command line.

``setting(30.0, help="…")`` is ``dataclasses.field(default=30.0)`` with a :class:`Flag`
in its metadata; ``gpufleet.cli`` generates each command's options from these fields
(name, type, default, help), and ``gpufleet export`` writes a ``gpufleet up`` command
line from the same fields. A field without a :class:`Flag` is a setting of the file and
the environment only. This module knows nothing of the CLI library.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, overload

T = TypeVar("T")

#: The key of a field's :class:`Flag` in its ``metadata``.
FLAG_KEY = "gpufleet.flag"


@dataclass(frozen=True, slots=True)
class Flag:
    """How one setting shows on the command line.

    ``names`` empty: one option named after the field (``drain_timeout_s`` ->
    ``--drain-timeout``; a list or mapping takes one item per use, so ``model_args`` ->
    ``--model-arg``). ``flag_value``: the option may be given without a value, which
    then is ``flag_value`` (``--ray`` alone means ``auto``, ``--ray HOST:PORT`` names one).
    """

    #: One line for ``--help``; the default is shown from the field, never written here.
    help: str
    #: Option names (``("--model", "-m")``) when they differ from the field's.
    names: tuple[str, ...] = ()
    #: What the value is (``SECONDS``, ``URL``); None: from the field's name and type.
    metavar: str | None = None
    #: The help panel the option is listed in (``gpufleet up`` groups its options).
    panel: str | None = None
    #: The value of the option given bare, for an option whose value is optional.
    flag_value: str | None = None


@overload
def setting(
    default: T,
    *,
    help: str,
    names: tuple[str, ...] = (),
    metavar: str | None = None,
    panel: str | None = None,
    flag_value: str | None = None,
) -> T: ...


@overload
def setting(
    *,
    factory: Callable[[], T],
    help: str,
    names: tuple[str, ...] = (),
    metavar: str | None = None,
    panel: str | None = None,
    flag_value: str | None = None,
) -> T: ...


def setting(
    default: Any = dataclasses.MISSING,
    *,
    factory: Callable[[], Any] | None = None,
    help: str,
    names: tuple[str, ...] = (),
    metavar: str | None = None,
    panel: str | None = None,
    flag_value: str | None = None,
) -> Any:
    """A dataclass field that is also a command-line option (see :class:`Flag`)."""
    flag = Flag(help=help, names=names, metavar=metavar, panel=panel, flag_value=flag_value)
    metadata = {FLAG_KEY: flag}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def flag_of(field: dataclasses.Field[Any]) -> Flag | None:
    """The :class:`Flag` of ``field``; None for a setting of the file and env only."""
    flag = field.metadata.get(FLAG_KEY)
    return flag if isinstance(flag, Flag) else None


def default_of(field: dataclasses.Field[Any]) -> Any:
    """The default of ``field`` (a factory's product), or ``dataclasses.MISSING``."""
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


__all__ = ["FLAG_KEY", "Flag", "default_of", "flag_of", "setting"]
