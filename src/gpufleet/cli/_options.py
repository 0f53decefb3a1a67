"""Command-line options generated from the settings dataclasses, so each is declared once.

``@from_settings(WorkerConfig)`` adds an option for every field of ``WorkerConfig`` that
carries a :class:`~gpufleet.config._setting.Flag` to the command it decorates, and hands
the command what was given as one ``flags`` mapping (field -> value, None when not given:
a flag beats ``GPUFLEET_*`` env, which beats the file, only when it was given). Its name,
metavar, help, and the default its help shows all come from the field:

- names: ``--`` and the field's name with ``_`` as ``-``, a seconds suffix ``_s``
  dropped, and a list or mapping (``model_args``) singular (``--model-arg``, repeated);
- metavar: a ``Literal``'s choices (``[pull|round-robin]``, or ``NAME`` with the choices
  in the help when they are many), else a plain word for what it takes (``SECONDS``,
  ``N``, ``PORT``, ``PATH``…), none for an on/off flag;
- the default shown: the field's own (``[default: 600]``), ``--x`` for a flag that is on.

How each is spelled is ``_spelling``; here the options are made and read back.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Annotated, Any, Literal, TypeVar

import typer

from gpufleet.cli._spelling import (
    choices,
    help_text,
    kind_of,
    metavar,
    option_names,
    shown_default,
    strip_optional,
)
from gpufleet.config._setting import Flag, flag_of

F = TypeVar("F", bound=Callable[..., Any])

#: What a command gets: each setting's value as given on the command line, None if not.
FlagValues = dict[str, Any]

#: The attribute of a decorated command listing its generated options (param -> option).
OPTIONS_ATTR = "gpufleet_options"


@dataclasses.dataclass(frozen=True, slots=True)
class Option:
    """One generated option: the setting it fills and how the command line spells it."""

    field: str
    names: tuple[str, ...]
    kind: Literal["value", "list", "pairs", "switch"]
    flag: Flag

    @property
    def name(self) -> str:
        """The option's first (long) name, e.g. ``--model``."""
        return self.names[0].split("/")[0]


#: Each settings class's field types, resolved once (the CLI builds its options at start).
_HINTS: dict[type[Any], dict[str, Any]] = {}


def _hints(cls: type[Any]) -> dict[str, Any]:
    """``cls``'s field types (``typing.get_type_hints``, kept)."""
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _cli_type(kind: str, tp: Any) -> Any:
    if kind == "switch":
        return bool | None
    if kind in ("list", "pairs"):
        return list[str] | None
    inner = strip_optional(tp)
    if inner in (int, float):
        return inner | None
    return str | None


def options_of(cls: type[Any], only: Iterable[str] | None = None) -> dict[str, Option]:
    """The options of ``cls``'s flagged fields (``only`` these, in their order), by field."""
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    names = list(fields) if only is None else list(only)
    out: dict[str, Option] = {}
    for name in names:
        field = fields[name]
        flag = flag_of(field)
        if flag is None:
            if only is not None:
                raise TypeError(f"{cls.__name__}.{name} has no command-line flag")
            continue
        out[name] = Option(
            field=name,
            names=option_names(field, hints[name], flag),
            kind=kind_of(hints[name]),
            flag=flag,
        )
    return out


def _parameters(cls: type[Any], options: Mapping[str, Option]) -> list[inspect.Parameter]:
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    params = []
    for name, option in options.items():
        field, tp = fields[name], hints[name]
        shown = shown_default(field, option.names)
        info = typer.Option(
            *option.names,
            help=help_text(option.flag, tp),
            metavar=metavar(name, tp, option.flag),
            show_default=shown if shown is not None else False,
            rich_help_panel=option.flag.panel,
        )
        params.append(
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                annotation=Annotated[_cli_type(option.kind, tp), info],
            )
        )
    return params


def _value(option: Option, given: Any) -> Any:
    """A given option's value as the setting takes it (lists as tuples, pairs as a dict)."""
    if given is None or given == []:
        return None
    if option.kind == "list":
        return tuple(given)
    if option.kind == "pairs":
        from gpufleet.errors import ConfigError

        out: dict[str, str] = {}
        for pair in given:
            key, sep, value = pair.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"{option.name} takes key=value, got {pair!r}")
            out[key.strip()] = value.strip()
        return out
    return given


def from_settings(
    cls: type[Any], *, into: str = "flags", only: Iterable[str] | None = None
) -> Callable[[F], F]:
    """Give the decorated command an option per flagged field of ``cls``.

    The command takes a parameter named ``into`` (a :data:`FlagValues`) where the options go:
    they are listed in its place. ``only`` picks some fields (in that order).

    Raises:
        TypeError: a generated option's name is a parameter of the command already.
    """
    options = options_of(cls, only)

    def decorate(command: F) -> F:
        own = inspect.signature(command, eval_str=True)
        clash = set(own.parameters) & set(options)
        if into not in own.parameters or clash:
            raise TypeError(
                f"{command.__name__} needs a parameter {into!r} and none named as an option"
                f" of {cls.__name__} (it has {sorted(clash)})"
            )
        generated = _parameters(cls, options)
        params: list[inspect.Parameter] = []
        for param in own.parameters.values():
            if param.name == into:
                params += generated
            else:
                params.append(param.replace(kind=inspect.Parameter.KEYWORD_ONLY))

        def run(**kwargs: Any) -> Any:
            from gpufleet.cli._common import config_errors_exit

            with config_errors_exit():
                flags = {n: _value(o, kwargs.pop(n, None)) for n, o in options.items()}
            return command(**kwargs, **{into: flags})

        run.__name__, run.__qualname__ = command.__name__, command.__qualname__
        run.__doc__, run.__module__ = command.__doc__, command.__module__
        run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        known: dict[str, Option] = dict(getattr(command, OPTIONS_ATTR, {}))
        setattr(run, OPTIONS_ATTR, {**known, **options})
        return typing.cast(F, run)

    return decorate


def given_args(options: Mapping[str, Option], flags: FlagValues) -> list[str]:
    """The command line that gives ``flags`` again: ``--model m --model-arg k=v …``."""
    args: list[str] = []
    for name, option in options.items():
        value = flags.get(name)
        if value is None:
            continue
        if option.kind == "switch":  # a plain flag (--detach) has no form for off
            on, _, off = option.names[0].partition("/")
            args += [on] if value else [off] if off else []
        elif option.kind == "list":
            for item in value:
                args += [option.name, str(item)]
        elif option.kind == "pairs":
            for key, item in value.items():
                args += [option.name, f"{key}={item}"]
        else:
            args += [option.name, str(value)]
    return args


__all__ = [
    "OPTIONS_ATTR",
    "FlagValues",
    "Option",
    "choices",
    "from_settings",
    "given_args",
    "metavar",
    "option_names",
    "options_of",
    "shown_default",
]
