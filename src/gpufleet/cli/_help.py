"""``--help`` that reads like the tools people know, set once for every command.

The options generated from the settings (``cli/_options.py``) already carry a plain
metavar, their help, their panel and the default to show; the few written by hand carry
their own. What typer would still print its own way is set here, over the built commands:

- a default as ``[default: X]``: typer prints a default given as text in parentheses
  (``[default: (600)]``); an option left unset (None) shows its setting's default that
  way, since the option itself must stay None (a value not given must not beat the
  environment or the file);
- no ``<bool>`` for flags and ``--help``, no ``<str>`` for arguments, and a plain word
  (``URL``, ``N``, ``PATH``) for a hand-written option that names none.
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperArgument, TyperOption


def _shown(value: Any) -> str:
    """A default as the help shows it (``30``, not ``30.0``)."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _show_default(param: TyperOption) -> None:
    """Show the option's default as ``[default: X]``, never ``[default: (X)]``."""
    if isinstance(param.show_default, str):
        shown = param.show_default
    elif param.default is not None and param.show_default and not (param.is_flag or param.count):
        shown = _shown(param.default)
        param.show_default = shown
    else:
        param.show_default = False
        return
    _plain_default(param, shown)


def _plain_default(param: TyperOption | TyperArgument, shown: str) -> None:
    # Typer wraps a default given as text in parentheses; this is where it does so.
    param._get_default_string = lambda **_: shown  # type: ignore[method-assign]


def _plain_metavar(param: TyperOption) -> str:
    """A word for what a hand-written option without a metavar takes (``URL``, ``N``)."""
    name = param.name or ""
    kind = param.bare_type()
    if name == "url" or name.endswith("_url"):
        return "URL"
    if kind in ("int", "float"):
        return "N"
    if kind == "Path":
        return "PATH"
    return name.rsplit("_", 1)[-1].upper()


def polish_command(command: Any) -> None:
    """Defaults as ``[default: X]``, and no type names, on one command's parameters."""
    for param in command.params:
        if isinstance(param, TyperOption):
            if param.is_flag or param.count:
                param.metavar = ""
            elif param.metavar is None:
                param.metavar = _plain_metavar(param)
            _show_default(param)
        elif isinstance(param, TyperArgument):
            if param.metavar is None:
                param.metavar = (param.name or "").upper()
            param.display_type_rich = lambda ctx: None  # type: ignore[method-assign]
            if isinstance(param.show_default, str):
                _plain_default(param, param.show_default)
    _quiet_help_option(command)


def _quiet_help_option(command: Any) -> None:
    """``--help`` shows no ``<bool>``."""
    option = command.get_help_option(command.context_class(command))
    if option is not None:
        option.metavar = ""


def commands(group: Any) -> list[Any]:
    """Every command under ``group`` (sub-groups and their commands too)."""
    out = []
    for command in getattr(group, "commands", {}).values():
        out.append(command)
        out += commands(command)
    return out


__all__ = ["commands", "polish_command"]
