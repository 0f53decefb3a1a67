"""Options whose value may be left out: ``gpufleet up --ray`` alone, or ``--ray HOST:PORT``.

Click does this with ``is_flag=False, flag_value=…``; the copy of click's parser that
typer 0.2x carries (``typer._click``) has no such option, so one gets a parser entry of
its own here (``Flag.flag_value`` in its field marks it): it takes the next word
only when that word is not an option (``up`` has no arguments for it to swallow), else the
option's ``flag_value`` (``--ray`` alone means ``auto``). ``--ray=HOST:PORT`` works too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gpufleet.cli._options import OPTIONS_ATTR, Option


def allow_bare_values(command: Any) -> None:
    """Let each generated option of ``command`` with a ``flag_value`` go without a value."""
    options: Mapping[str, Option] = getattr(command.callback, OPTIONS_ATTR, {})
    for param in command.params:
        option = options.get(param.name or "")
        if option is not None and option.flag.flag_value is not None:
            _take_bare(param, option.flag.flag_value)


def _take_bare(param: Any, bare: str) -> None:
    try:  # typer 0.2x parses with its own copy of click's parser …
        from typer._click.parser import _Option
    except ImportError:  # … older ones with click's (the same class)
        from click.parser import _Option  # type: ignore[assignment,unused-ignore]

    class _MaybeValued(_Option):
        def process(self, value: Any, state: Any) -> None:
            if value == ():  # nargs=0: the parser took nothing; take a word that is a value
                ahead = state.rargs[0] if state.rargs else "-"
                value = state.rargs.pop(0) if not ahead.startswith("-") else bare
            state.opts[self.dest] = value
            state.order.append(self.obj)

    def add_to_parser(parser: Any, ctx: Any) -> None:
        option = _MaybeValued(param, param.opts, param.name, action="store", nargs=0)
        parser._opt_prefixes.update(option.prefixes)
        for opt in option._short_opts:
            parser._short_opt[opt] = option
        for opt in option._long_opts:
            parser._long_opt[opt] = option

    param.add_to_parser = add_to_parser


__all__ = ["allow_bare_values"]
