"""Settings of ``gpufleet up --ray``: which cluster, and how Ray places each worker."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gpufleet.config._load import build
from gpufleet.config._setting import setting
from gpufleet.config._yaml import read_yaml
from gpufleet.errors import ConfigError

#: Env of this section: ``GPUFLEET_RAY_ADDRESS``, ``GPUFLEET_RAY_WORKERS`` … (plain
#: ``GPUFLEET_WORKERS`` is the router's list of upstreams).
ENV_PREFIX = "GPUFLEET_RAY_"
#: ``gpufleet up --help`` lists the Ray options in this panel.
_RAY = "Ray (more than one machine)"


@dataclass(frozen=True, slots=True)
class RayConfig:
    """Flags ``--ray``, ``--gpus-per-worker`` …; env ``GPUFLEET_RAY_*``; YAML ``ray:``.

    ``address`` None means a local fleet (no Ray). ``auto`` joins the cluster this machine
    belongs to (``ray start`` ran here, or ``RAY_ADDRESS``); ``HOST:PORT`` names the head's
    GCS; ``ray://HOST:10001`` goes through Ray Client.
    """

    address: str | None = setting(
        None,
        help="Place the workers on a Ray cluster: --ray alone joins the one this machine"
        " belongs to; --ray ADDRESS (HOST:PORT, ray://HOST:10001) names it.",
        names=("--ray", "--ray-address"),
        metavar="[ADDRESS]",
        panel=_RAY,
        flag_value="auto",
    )
    #: Fractions share a GPU; 0: CPU workers.
    gpus_per_worker: float = setting(1.0, help="--ray: GPUs per worker actor (0: CPU).", panel=_RAY)
    cpus_per_worker: float = 1.0
    workers: int | None = setting(
        None, help="--ray: worker count (unset: the cluster's GPUs).", panel=_RAY
    )
    #: 0: never, the fleet makes a new one.
    max_restarts: int = setting(
        -1,
        help="--ray: Ray restarts of a dead actor (-1: always).",
        names=("--ray-max-restarts",),
        panel=_RAY,
    )
    #: ``SPREAD`` puts workers on as many nodes as it can; ``DEFAULT`` packs them.
    strategy: Literal["SPREAD", "DEFAULT"] = "SPREAD"
    namespace: str = "gpufleet"

    def __post_init__(self) -> None:
        if self.address is not None and not self.address.strip():
            raise ConfigError("ray address must not be empty (use auto)")
        if self.gpus_per_worker < 0 or self.cpus_per_worker < 0:
            raise ConfigError("gpus_per_worker and cpus_per_worker must be >= 0")
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers}")
        if self.max_restarts < -1:
            raise ConfigError(f"max_restarts must be >= -1, got {self.max_restarts}")

    @property
    def enabled(self) -> bool:
        """True when the fleet runs on Ray."""
        return self.address is not None


def load_ray_config(
    *,
    flags: Mapping[str, Any] | None = None,
    config_path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
) -> RayConfig:
    """Flags > ``GPUFLEET_RAY_*`` env > the YAML file's ``ray:`` section > defaults.

    Raises:
        ConfigError: an unknown key, a value of the wrong type, or a bad combination.
    """
    section = read_yaml(config_path).get("ray") or {}
    if not isinstance(section, dict):
        raise ConfigError(f"section 'ray' of {config_path} must be a mapping")
    return build(RayConfig, flags=flags, env=env, file_section=section, env_prefix=ENV_PREFIX)


__all__ = ["ENV_PREFIX", "RayConfig", "load_ray_config"]
