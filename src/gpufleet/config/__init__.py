"""Typed settings for every part, built once at the edge.

CLI flag > ``GPUFLEET_*`` env > YAML file (``--config fleet.yaml``, one section per part:
``worker:``, ``router:``, ``fleet:``, ``client:``) > default.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from gpufleet.config._load import as_dict, build, check_section, coerce
from gpufleet.config._yaml import read_yaml
from gpufleet.config.worker import BatchConfig, WorkerConfig

T = TypeVar("T")


def load(
    cls: type[T],
    section: str,
    *,
    flags: Mapping[str, Any] | None = None,
    config_path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
) -> T:
    """Build settings of type ``cls`` from flags, env and the ``section`` of a YAML file."""
    data = read_yaml(config_path)
    part = data.get(section) or {}
    if not isinstance(part, dict):
        from gpufleet.errors import ConfigError

        raise ConfigError(f"section {section!r} of {config_path} must be a mapping")
    return build(cls, flags=flags, env=env, file_section=part)


def check_file(config_path: str | Path | None) -> None:
    """Check every section of a config file: its name, its keys, the type of each value.

    ``gpufleet up`` calls it before starting anything: the children it starts read their
    own sections, and a mistake there would only show in their logs.

    Raises:
        ConfigError: the first mistake, with the file and line.
    """
    from gpufleet.config.client import ClientConfig
    from gpufleet.config.fleet import load_fleet_config
    from gpufleet.config.operate import BenchConfig, MonitorConfig
    from gpufleet.config.ray import RayConfig
    from gpufleet.config.router import RouterConfig

    data = read_yaml(config_path)
    parts: dict[str, type[Any]] = {
        "worker": WorkerConfig,
        "router": RouterConfig,
        "client": ClientConfig,
        "ray": RayConfig,
        "bench": BenchConfig,
        "monitor": MonitorConfig,
    }
    for name, section in data.items():
        if name == "fleet":
            load_fleet_config(config_path=config_path, env={})
        elif section is not None:
            if not isinstance(section, dict):
                from gpufleet.errors import ConfigError

                raise ConfigError(f"section {name!r} of {config_path} must be a mapping")
            check_section(parts[name], section)


__all__ = [
    "BatchConfig",
    "WorkerConfig",
    "as_dict",
    "build",
    "check_file",
    "coerce",
    "load",
    "read_yaml",
]
