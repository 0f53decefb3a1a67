"""What ``gpufleet up`` checks before it starts anything, so a mistake is one line, at once.

Each check answers what would otherwise surface as a child crash-looping with its reason
in a log file: a model name or path that cannot be imported, a config file's unknown
section or key (the workers and the router read their own sections), the endpoint's port
held by another process. The policy name and other typed settings are checked when the
settings are built.
"""

from __future__ import annotations

from pathlib import Path

from gpufleet._sockets import port_in_use
from gpufleet.config import check_file
from gpufleet.config.fleet import FleetConfig
from gpufleet.fleet.ports import is_free
from gpufleet.models import check_model_spec


def check_up(cfg: FleetConfig, *, config_path: str | Path | None = None) -> None:
    """Refuse settings that could not start a fleet.

    Raises:
        ConfigError: the first mistake found, in one line.
    """
    check_file(config_path)
    for pool in cfg.effective_pools():
        if pool.model is not None:
            check_model_spec(pool.model)
    if cfg.port != 0 and not is_free(cfg.host, cfg.port):
        raise port_in_use(cfg.host, cfg.port)


__all__ = ["check_up"]
