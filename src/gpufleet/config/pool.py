"""One pool of identical workers (``fleet: pools:`` in the YAML file): a model or a server
command, its GPUs, its path prefix; and the checks a GPU selection and a command template
pass, which ``FleetConfig`` uses for the fleet's own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from gpufleet.errors import ConfigError

#: Placeholders a ``cmd`` template may use.
CMD_PLACEHOLDERS = ("port", "gpu", "index", "host")
#: ``{name}`` in a cmd template; other braces (JSON arguments, say) are left alone.
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def check_gpus(spec: str) -> str:
    """Validate a GPU selection: ``all``, ``none``, ``N`` (a count) or ``0,2`` / UUIDs.

    A single index needs a trailing comma (``3,``) to be told apart from a count.
    """
    text = spec.strip()
    if text in {"all", "none"} or text.isdigit():
        return text
    items = [i.strip() for i in text.split(",") if i.strip()]
    if not items:
        raise ConfigError(f"gpus: cannot read {spec!r}; use all, none, N, or a list like 0,2")
    for item in items:
        if not (item.isdigit() or item.startswith(("GPU-", "MIG-"))):
            raise ConfigError(f"gpus: {item!r} is neither a GPU index nor a GPU UUID")
    # Keep a lone index a list ("3,"): "3" alone would mean "the first three".
    return ",".join(items) + ("," if len(items) == 1 else "")


def check_cmd(cmd: str | None, where: str) -> None:
    """Refuse an empty ``cmd`` template or one with an unknown placeholder."""
    if cmd is None:
        return
    if not cmd.strip():
        raise ConfigError(f"{where}: cmd must not be empty")
    names = set(PLACEHOLDER.findall(cmd))
    unknown = sorted(names - set(CMD_PLACEHOLDERS))
    if unknown:
        raise ConfigError(
            f"{where}: unknown placeholder(s) {', '.join('{' + u + '}' for u in unknown)} "
            f"in cmd; known: {', '.join('{' + p + '}' for p in CMD_PLACEHOLDERS)}"
        )


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """One group of identical workers: a model (or a command), its GPUs, its path prefix."""

    name: str = "default"
    #: A gpufleet model (built-in name, ``package.module:Class`` or ``file.py:Class``) …
    model: str | None = None
    model_args: dict[str, str] = field(default_factory=dict)
    #: … or any server command per device, with ``{port}`` ``{gpu}`` ``{index}`` ``{host}``.
    cmd: str | None = None
    #: None: the fleet's ``gpus``.
    gpus: str | None = None
    workers_per_gpu: int | None = None
    cpu_workers: int | None = None
    #: Requests under this path prefix go to this pool (stripped before proxying).
    prefix: str | None = None
    #: Extra arguments for each ``gpufleet worker`` of this pool.
    worker_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ConfigError(f"pool name {self.name!r}: use letters, digits, '_', '.', '-'")
        where = f"pool {self.name}"
        if self.model is not None and self.cmd is not None:
            raise ConfigError(f"{where}: give model or cmd, not both")
        check_cmd(self.cmd, where)
        if self.gpus is not None:
            object.__setattr__(self, "gpus", check_gpus(self.gpus))
        if self.workers_per_gpu is not None and self.workers_per_gpu < 1:
            raise ConfigError(f"{where}: workers_per_gpu must be >= 1")
        if self.cpu_workers is not None and self.cpu_workers < 0:
            raise ConfigError(f"{where}: cpu_workers must be >= 0")
        if self.prefix is not None and (not self.prefix.startswith("/") or self.prefix == "/"):
            raise ConfigError(f"{where}: prefix must start with '/' and not be '/' alone")


__all__ = ["CMD_PLACEHOLDERS", "PLACEHOLDER", "PoolConfig", "check_cmd", "check_gpus"]
