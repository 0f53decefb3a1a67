"""gpufleet: one model on every GPU behind one endpoint, and bulk jobs through it.

Importing gpufleet does no work: the client and the models load when first used.
"""

from gpufleet.errors import ConfigError, GpufleetError
from gpufleet.models.base import Model

__version__ = "0.1.0"

__all__ = ["ConfigError", "GpufleetError", "Model", "__version__"]
