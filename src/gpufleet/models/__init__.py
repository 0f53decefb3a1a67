"""What a worker serves: the Model contract, the built-in models, and the loader.

A model is named on the command line as a built-in name (``minilm``, ``synthetic``,
``image-demo``), as ``package.module:Class``, or as ``path/to/file.py:Class``.
"""

from __future__ import annotations

import ast
import difflib
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


def _unknown(spec: str) -> ConfigError:
    close = difflib.get_close_matches(spec, list(BUILTIN_MODELS), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    known = ", ".join(sorted(BUILTIN_MODELS))
    return ConfigError(
        f"unknown model {spec!r}: {hint}(built-in: {known}; "
        "or package.module:Class, path/to/file.py:Class)"
    )


def _split(spec: str) -> tuple[str, str]:
    module_part, sep, class_name = BUILTIN_MODELS.get(spec, spec).rpartition(":")
    if not sep or not module_part or not class_name:
        raise _unknown(spec)
    return module_part, class_name


def _is_file(module_part: str) -> bool:
    return module_part.endswith(".py") or "/" in module_part


def _top_level_names(source: str) -> set[str] | None:
    """Names a module's source binds at its top level; None when any name may exist."""
    names: set[str] = set()
    for node in ast.parse(source).body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if alias.name == "*":
                    return None
                names.add((alias.asname or alias.name).split(".")[0])
        elif isinstance(node, ast.Expr):
            continue  # a docstring, a call: binds nothing
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
        else:
            return None  # if/try blocks and the like: any name may come from them
    return None if "__getattr__" in names else names


def check_model_spec(spec: str) -> None:
    """Check that a worker could import the model ``spec`` names, without importing it.

    Built-in names are known; a file must exist and parse; a module must be found
    (``importlib.util.find_spec``: parent packages are imported, the module itself is
    not); the class must be bound at the top of its source where that can be told.
    Nothing is loaded: no weights, no torch.

    Raises:
        ConfigError: the first thing that would make the worker fail to import it.
    """
    if spec in BUILTIN_MODELS:
        return
    module_part, class_name = _split(spec)
    if _is_file(module_part):
        path = Path(module_part)
        if not path.is_file():
            raise ConfigError(f"model file {path} does not exist")
        origin: str | None = str(path)
    else:
        try:
            found = importlib.util.find_spec(module_part)
        except (ImportError, ValueError) as exc:
            raise ConfigError(f"cannot import model module {module_part!r}: {exc}") from None
        if found is None:
            raise ConfigError(f"cannot import model module {module_part!r}: no such module")
        origin = found.origin
    if origin is None or not origin.endswith(".py"):
        return  # a namespace package or a compiled module: only importing would tell
    try:
        source = Path(origin).read_text(encoding="utf-8")
        names = _top_level_names(source)
    except SyntaxError as exc:
        raise ConfigError(f"model {spec}: {origin}, line {exc.lineno}: {exc.msg}") from None
    except (OSError, UnicodeDecodeError, ValueError):
        return
    if names is not None and class_name not in names:
        close = difflib.get_close_matches(class_name, sorted(names), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{module_part} has no class {class_name!r}{hint}")


def resolve_model_class(spec: str) -> type[Any]:
    """Import the model class named by ``spec``.

    Raises:
        ConfigError: the module, file or class does not exist, or is not a class.
    """
    module_part, class_name = _split(spec)
    if _is_file(module_part):
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


__all__ = [
    "BUILTIN_MODELS",
    "MODEL_KINDS",
    "Model",
    "ModelKind",
    "check_model_spec",
    "resolve_model_class",
]
