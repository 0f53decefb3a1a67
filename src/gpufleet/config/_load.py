"""Build a frozen settings dataclass from flags, ``GPUFLEET_*`` env, a YAML file and defaults.

Precedence: a flag given on the command line (not None) beats ``GPUFLEET_<FIELD>`` in the
environment, which beats the YAML file's section for the part, which beats the default.
This is the only place in gpufleet that reads the environment or the config file (the
file itself is read by ``_yaml.read_yaml``).
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

from gpufleet.config._yaml import Located, did_you_mean
from gpufleet.errors import ConfigError

T = TypeVar("T")

ENV_PREFIX = "GPUFLEET_"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}

#: How much a process logs (``--log-level``).
LogLevel = Literal["debug", "info", "warning", "error"]


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def coerce(name: str, tp: Any, value: Any) -> Any:
    """Turn ``value`` (a string from env, or a YAML scalar/list/map) into type ``tp``."""
    inner, optional = _strip_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{name} must not be empty")
    if optional and isinstance(value, str) and value.strip().lower() in {"", "none", "null"}:
        return None
    origin = typing.get_origin(inner)
    try:
        if inner is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ValueError(value)
        if inner is int:
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if inner is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if inner is str:
            if isinstance(value, (dict, list)):
                raise ValueError(value)
            return str(value)
        if origin is tuple:
            (item_tp, *_rest) = typing.get_args(inner)
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(
                coerce(name, item_tp, i.strip() if isinstance(i, str) else i)
                for i in items
                if not (isinstance(i, str) and not i.strip())
            )
        if origin is dict:
            if isinstance(value, str):
                pairs = [p for p in value.split(",") if p.strip()]
                out: dict[str, str] = {}
                for pair in pairs:
                    key, sep, val = pair.partition("=")
                    if not sep:
                        raise ValueError(pair)
                    out[key.strip()] = val.strip()
                return out
            if isinstance(value, dict):
                return {str(k): str(v) for k, v in value.items()}
            raise ValueError(value)
        if typing.get_origin(inner) is typing.Literal:
            allowed = typing.get_args(inner)
            # Case does not matter (GPUFLEET_LOG_LEVEL=DEBUG, strategy: spread).
            same = [a for a in allowed if str(a).lower() == str(value).strip().lower()]
            if same:
                return same[0]
            if value not in allowed:
                choices = ", ".join(str(a) for a in allowed)
                raise ConfigError(
                    f"{name} must be one of {choices}; got {value!r}{did_you_mean(value, allowed)}"
                )
            return value
        if dataclasses.is_dataclass(inner) or inner is Any or origin is list:
            return value
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}: cannot read {value!r} as {_type_name(tp)}") from exc
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def build(
    cls: type[T],
    *,
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    file_section: Mapping[str, Any] | None = None,
    env_prefix: str = ENV_PREFIX,
) -> T:
    """Build ``cls`` (a dataclass) from the layers, highest precedence first.

    Raises:
        ConfigError: an unknown key in the file section, or a value of the wrong type.
    """
    flags = flags or {}
    env = os.environ if env is None else env
    section = file_section or {}
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    check_keys(cls, section)
    unknown_flags = sorted(set(flags) - set(fields))
    if unknown_flags:
        raise ConfigError(f"unknown flag(s) {', '.join(unknown_flags)} for {cls.__name__}")
    kwargs: dict[str, Any] = {}
    for name, field in fields.items():
        if not field.init:
            continue
        tp = hints[name]
        if flags.get(name) is not None:
            kwargs[name] = coerce(f"--{name.replace('_', '-')}", tp, flags[name])
        elif (env_name := env_prefix + name.upper()) in env:
            kwargs[name] = coerce(env_name, tp, env[env_name])
        elif name in section:
            kwargs[name] = coerce(_where(section, name), tp, section[name])
    return cls(**kwargs)


#: The one variable outside ``GPUFLEET_*`` that a setting is read from (``gpus``).
GPU_IDS = "GPU_IDS"


def gpu_ids(env: Mapping[str, str] | None = None) -> str | None:
    """The GPUs ``GPU_IDS`` names, as a ``gpus`` setting; None when it is unset or empty.

    ``GPU_IDS`` (a variable other tools set too) is a list, never a count: ``GPU_IDS=3``
    is GPU 3, so a single index gets the list's comma (``3,``).
    """
    text = (os.environ if env is None else env).get(GPU_IDS, "").strip()
    if not text:
        return None
    return f"{text}," if text.isdigit() else text


def settings_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables of ``env`` that settings are read from: ``GPUFLEET_*`` and ``GPU_IDS``."""
    source = os.environ if env is None else env
    return {k: v for k, v in source.items() if k.startswith(ENV_PREFIX) or k == GPU_IDS}


def _where(section: Mapping[str, Any], key: str) -> str:
    """``fleet.yaml, line 4: port`` for a located section's key, else ``key``."""
    if isinstance(section, Located):
        return f"{section.at(key)}{key}"
    return key


def check_keys(cls: type[Any], section: Mapping[str, Any]) -> None:
    """Refuse a key of ``section`` that is no setting of ``cls``: its line, a suggestion.

    Raises:
        ConfigError: ``fleet.yaml, line 3: unknown setting 'modle' in fleet (did you mean
            'model'?)``.
    """
    known = [f.name for f in dataclasses.fields(cls) if f.init]
    for key in section:
        if key not in known:
            where = section.where if isinstance(section, Located) and section.where else ""
            hint = did_you_mean(key, known) or f"; known: {', '.join(sorted(known))}"
            at = section.at(key) if isinstance(section, Located) else ""
            in_section = f" in {where}" if where else f" for {cls.__name__}"
            raise ConfigError(f"{at}unknown setting {key!r}{in_section}{hint}")


def check_section(cls: type[Any], section: Mapping[str, Any]) -> None:
    """Check a file section without building it: known keys, values of the right type.

    Raises:
        ConfigError: the first unknown key or unreadable value, with its line.
    """
    check_keys(cls, section)
    hints = typing.get_type_hints(cls)
    for key, value in section.items():
        coerce(_where(section, key), hints[key], value)


def as_dict(cfg: Any) -> dict[str, Any]:
    """A settings object as plain data (tuples become lists), for ``config show``."""
    data = dataclasses.asdict(cfg)

    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(i) for i in v]
        if isinstance(v, dict):
            return {k: plain(i) for k, i in v.items()}
        return v

    return {k: plain(v) for k, v in data.items()}
