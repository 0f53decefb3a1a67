"""What a worker serves: the Model contract, the built-in models, and the loader.

A model is named on the command line as a built-in name (``minilm``, ``synthetic``,
``image-demo``), as ``package.module:Class``, or as ``path/to/file.py:Class``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from gpufleet.errors import ConfigError
from gpufleet.models.base import MODEL_KINDS, Model, ModelKind

#: Built-in names -> import spec. Imported only when asked for (torch is heavy).
BUILTIN_MODELS: dict[str, str] = {
    "minilm": "gpufleet.models.minilm:MiniLM",
    "synthetic": "gpufleet.models.synthetic:Synthetic",
    "image-demo": "gpufleet.models.image_demo:ImageDemo",
}


def resolve_model_class(spec: str) -> type[Any]:
    """Import the model class named by ``spec``.

    Raises:
        ConfigError: the module, file or class does not exist, or is not a class.
    """
    target = BUILTIN_MODELS.get(spec, spec)
    module_part, sep, class_name = target.rpartition(":")
    if not sep or not module_part or not class_name:
        known = ", ".join(sorted(BUILTIN_MODELS))
        raise ConfigError(
            f"unknown model {spec!r}: use a built-in name ({known}), "
            "package.module:Class or path/to/file.py:Class"
        )
    if module_part.endswith(".py") or "/" in module_part:
        path = Path(module_part)
        if not path.is_file():
            raise ConfigError(f"model file {path} does not exist")
        mod_name = f"_gpufleet_user_model_{abs(hash(path.resolve()))}"
        loader_spec = importlib.util.spec_from_file_location(mod_name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise ConfigError(f"cannot import model file {path}")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[mod_name] = module
        loader_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(module_part)
        except ImportError as exc:
            raise ConfigError(f"cannot import model module {module_part!r}: {exc}") from exc
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise ConfigError(f"{module_part} has no class {class_name!r}")
    if not callable(getattr(cls, "predict", None)):
        raise ConfigError(f"{spec}: the class has no predict(batch) method")
    return cls


__all__ = ["BUILTIN_MODELS", "MODEL_KINDS", "Model", "ModelKind", "resolve_model_class"]
