"""gpufleet: one model on every GPU behind one endpoint, and bulk jobs through it.

Importing gpufleet does no work: the client and the models load when first used.
"""

import importlib as _importlib
import typing as _typing

from gpufleet.errors import ConfigError, GpufleetError
from gpufleet.models.base import Model

if _typing.TYPE_CHECKING:
    from gpufleet.client import Client

__version__ = "0.1.0"

__all__ = ["Client", "ConfigError", "GpufleetError", "Model", "__version__"]

#: Names imported on first use, so ``import gpufleet`` stays cheap (no aiohttp).
_LAZY = {"Client": "gpufleet.client"}


def __getattr__(name: str) -> _typing.Any:
    if name in _LAZY:
        value = getattr(_importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'gpufleet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
