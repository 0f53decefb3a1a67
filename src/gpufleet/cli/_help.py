"""``--help`` that reads like the tools people know, set once for every command.

Each option keeps its one declaration in its command's module; this pass over the built
click commands derives what the help shows:

- a plain metavar (``URL``, ``PATH``, ``N``, ``SECONDS``, ``HOST``, ``PORT``), or the
  choices (``[prefix|capacity|…]``) for a setting whose type is a ``Literal``; flags show
  none (typer would print ``<bool>``);
- the default, always as typer's ``[default: X]``: an option left unset (None) takes its
  setting's default from the part's config dataclass, so that is what is shown (and a
  ``(600)`` or ``(default 30)`` written into the help text is taken out);
- for ``up``, options grouped in panels (what runs, devices, network, router,
  supervision, files, Ray).
"""

from __future__ import annotations

import dataclasses
import re
import typing
from typing import Any

from typer.core import TyperArgument, TyperOption

#: Each command's settings: the config class whose fields its options fill.
_CONFIGS = {
    "up": ("gpufleet.config.fleet", "FleetConfig"),
    "worker": ("gpufleet.config.worker", "WorkerConfig"),
    "router": ("gpufleet.config.router", "RouterConfig"),
    "generate": ("gpufleet.config.client", "ClientConfig"),
    "bench": ("gpufleet.config.operate", "BenchConfig"),
    "monitor": ("gpufleet.config.operate", "MonitorConfig"),
    "export": ("gpufleet.config.fleet", "FleetConfig"),
}
#: Options named otherwise than their field.
_FIELDS = {
    "model_arg": "model_args",
    "router_arg": "router_args",
    "worker_arg": "worker_args",
    "payload": "payload_file",
    "allowed_host": "allowed_hosts",
    "allow_upstream": "allowed_upstreams",
    "worker": "workers",
    "route": "routes",
    "batch_share": "batch_share_percent",
    "retry_budget": "retry_budget_percent",
}
#: ``up --ray …`` options fill ``RayConfig``.
_RAY_FIELDS = {
    "ray_address": "address",
    "gpus_per_worker": "gpus_per_worker",
    "workers": "workers",
    "ray_max_restarts": "max_restarts",
}
#: Choices of options that are not config fields.
_CHOICES = {"progress": ("auto", "bar", "plain", "none")}

_URL = {"url", "endpoint", "worker"}
_PATHS = {"config", "output", "report", "payload", "log_dir", "run_dir", "batch_store"}
_PATHS |= {"prompts_file", "port_file", "admin_token_file", "out"}
_NAMED = {
    "host": "HOST",
    "worker_host": "HOST",
    "allowed_host": "HOST",
    "allow_upstream": "CIDR",
    "port": "PORT",
    "worker_base_port": "PORT",
    "model": "MODEL",
    "cmd": "COMMAND",
    "gpus": "GPUS",
    "ray_address": "ADDRESS",
    "device": "DEVICE",
    "admin_token": "TOKEN",
    "image": "IMAGE",
    "namespace": "NAME",
    "sticky_header": "HEADER",
    "path": "PATH",
    "ready_path": "PATH",
    "health_path": "PATH",
    "route": "PREFIX=POOL",
    "model_arg": "KEY=VALUE",
    "router_arg": "ARG",
    "worker_arg": "ARG",
}
_UNITS = (
    ("_ms", "MS"),
    ("_mb", "MB"),
    ("_gb", "GB"),
    ("_kb", "KB"),
    ("_h", "HOURS"),
    ("_percent", "PERCENT"),
    ("_share", "PERCENT"),
)
#: Choices wider than this are listed in the help text instead (``NAME`` as metavar).
_MAX_CHOICES_WIDTH = 30
_SECONDS = re.compile(r"(^|_)(timeout|backoff|deadline|duration|interval|ttl|s)(_|$)")
#: A default written into a help text: ``(default 30)``, ``(default: stdout)``.
_WRITTEN_DEFAULT = re.compile(r"\s*[(\[]default:? ([^)\]]*)[)\]]")

#: ``up``'s help panels: option name -> panel.
_UP_PANELS = {
    "What runs": "model model_arg cmd ready_path startup_timeout worker_arg stall_timeout",
    "Devices": "gpus workers_per_gpu cpu_workers discovery",
    "Where it listens": "host port port_file worker_host worker_base_port",
    "The router": "policy router_arg batch_store",
    "Supervision": "restart_backoff restart_backoff_max drain_timeout detach",
    "Files and logs": "log_dir run_dir log_level config",
    "Ray (more than one machine)": "ray ray_address gpus_per_worker workers ray_max_restarts",
}


def _field(fields: dict[str, Any], name: str) -> Any:
    for candidate in (_FIELDS.get(name, name), f"{name}_s", f"{name}_ms"):
        if candidate in fields:
            return fields[candidate]
    return None


def _config_fields(command: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The fields of ``command``'s config class (and ``RayConfig``'s for ``up``)."""
    import importlib

    spec = _CONFIGS.get(command)
    if spec is None:
        return {}, {}
    cls = getattr(importlib.import_module(spec[0]), spec[1])
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    ray: dict[str, Any] = {}
    if command == "up":
        from gpufleet.config.ray import RayConfig

        ray_fields = {f.name: f for f in dataclasses.fields(RayConfig)}
        ray_hints = typing.get_type_hints(RayConfig)
        ray = {o: (ray_fields[f], ray_hints[f]) for o, f in _RAY_FIELDS.items()}
    return {n: (f, hints[n]) for n, f in fields.items()}, ray


def _choices(tp: Any) -> tuple[str, ...]:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) is typing.Literal:
        return tuple(str(a) for a in typing.get_args(tp))
    for arg in args:
        if typing.get_origin(arg) is typing.Literal:
            return tuple(str(a) for a in typing.get_args(arg))
    return ()


def _shown(value: Any) -> str | None:
    """A default as the help shows it (None: nothing worth showing)."""
    if value is None or value == () or value == {} or value == "":
        return None
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def metavar(param: TyperOption, choices: tuple[str, ...] = ()) -> str:
    """The metavar ``param`` shows: its choices, or a plain word for what it takes."""
    name = param.name or ""
    if param.is_flag or param.count:
        return ""
    if choices or name in _CHOICES:
        listed = "[" + "|".join(choices or _CHOICES[name]) + "]"
        return listed if len(listed) <= _MAX_CHOICES_WIDTH else "NAME"
    if name in _URL:
        return "URL"
    if name in _PATHS:
        return "PATH"
    if name in _NAMED:
        return _NAMED[name]
    for suffix, word in _UNITS:
        if name.endswith(suffix):
            return word
    kind = param.bare_type()
    if kind == "float" and _SECONDS.search(name):
        return "SECONDS"
    if kind in ("int", "float"):
        return "N"
    if kind == "Path":
        return "PATH"
    return name.rsplit("_", 1)[-1].upper()


def _strip_default(text: str, shown: str) -> str:
    """Take a default written into the help text out (the ``[default: …]`` says it)."""
    text = _WRITTEN_DEFAULT.sub("", text)
    text = re.sub(rf"\({re.escape(shown)}; ", "(", text)  # "(1; 0: CPU)" -> "(0: CPU)"
    return re.sub(rf"\s*\({re.escape(shown)}\)(?=\.?$)", "", text)


def _show_default(param: TyperOption, shown: str) -> None:
    """Show ``shown`` as ``[default: shown]`` for an option whose own default is None.

    Typer prints a string ``show_default`` in parentheses; the default it would print
    is asked of the option, so it is told here (the option itself stays None: a value
    not given must not beat the environment or the file).
    """
    param.show_default = True
    param._extract_default_help_str = lambda *, ctx: shown  # type: ignore[method-assign]


def polish_command(name: str, command: Any) -> None:
    """Set metavars, defaults and (for ``up``) panels on one command's options."""
    fields, ray = _config_fields(name)
    panels = {o: panel for panel, names in _UP_PANELS.items() for o in names.split()}
    for param in command.params:
        if not isinstance(param, TyperOption):
            continue
        pname = param.name or ""
        found = ray.get(pname) if name == "up" and pname in ray else _field(fields, pname)
        field, tp = found if found is not None else (None, None)
        param.metavar = metavar(param, _choices(tp) if tp is not None else ())
        choices = _choices(tp) if tp is not None else _CHOICES.get(pname, ())
        if param.metavar == "NAME" and choices and param.help is not None:
            param.help = f"{param.help.rstrip('.')}. Choices: {', '.join(choices)}."
        if param.is_flag or param.count:
            _flag_default(param, field)
            continue
        shown: str | None = None
        if param.default is None and field is not None:
            if field.default is not dataclasses.MISSING:
                shown = _shown(field.default)
            elif field.default_factory is not dataclasses.MISSING:
                shown = _shown(field.default_factory())
        elif param.default is not None:
            shown = _shown(param.default)
        written = _WRITTEN_DEFAULT.search(param.help or "")
        if shown is None and written is not None:
            shown = written.group(1).strip()  # what the help says when no setting does
        if shown is None:
            param.show_default = False
        else:
            _show_default(param, shown)
            if param.help:
                param.help = _strip_default(param.help, shown).rstrip()
    for param in command.params:
        if isinstance(param, TyperArgument):
            _plain_argument(param)
        if name == "up" and isinstance(param, TyperOption) and param.name in panels:
            param.rich_help_panel = panels[param.name]
    _quiet_help_option(command)


def _flag_default(param: TyperOption, field: Any) -> None:
    """An on/off flag left unset shows its setting's default as the form that sets it."""
    param.show_default = False
    default = getattr(field, "default", None) if field is not None else None
    if param.default is not None or not param.secondary_opts or not isinstance(default, bool):
        return
    form = (param.opts if default else param.secondary_opts)[0].lstrip("-")
    param.show_default = True
    param._extract_default_help_str = lambda *, ctx: form  # type: ignore[method-assign]
    param._get_default_string = lambda **_: form  # type: ignore[method-assign]
    if param.help:
        param.help = _WRITTEN_DEFAULT.sub("", param.help)


def _plain_argument(param: TyperArgument) -> None:
    """An argument shows its name (``URL``, ``FORMAT``), not ``<str>``."""
    if param.metavar is None:
        param.metavar = "URL" if param.name == "url" else (param.name or "").upper()
    param.display_type_rich = lambda ctx: None  # type: ignore[method-assign]
    written = _WRITTEN_DEFAULT.search(param.help or "")
    if written is not None and param.help is not None:
        param.help = _WRITTEN_DEFAULT.sub("", param.help)
        param.show_default = True
        param._extract_default_help_str = lambda *, ctx: written.group(1)  # type: ignore[method-assign]


def _quiet_help_option(command: Any) -> None:
    """``--help`` shows no ``<bool>``."""
    option = command.get_help_option(command.context_class(command))
    if option is not None:
        option.metavar = ""


def polish(group: Any) -> None:
    """Polish every command under ``group`` (a typer group; sub-groups too)."""
    for name, command in getattr(group, "commands", {}).items():
        if hasattr(command, "commands"):
            polish(command)
        polish_command(name, command)
    _quiet_help_option(group)


__all__ = ["metavar", "polish", "polish_command"]
