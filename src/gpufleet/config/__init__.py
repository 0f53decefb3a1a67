"""Typed settings for every part, built once at the edge.

CLI flag > ``GPUFLEET_*`` env > YAML file (``--config fleet.yaml``, one section per part:
``worker:``, ``router:``, ``fleet:``, ``client:``) > default.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from gpufleet.config._load import as_dict, build, coerce, read_yaml
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


__all__ = ["BatchConfig", "WorkerConfig", "as_dict", "build", "coerce", "load", "read_yaml"]
