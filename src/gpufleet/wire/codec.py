"""One way to put a wire type on a socket and one way to read it back.

Producers build a ``msgspec.Struct`` from ``gpufleet.wire`` and ``encode`` it; consumers
``decode`` a peer's body once, into the type they expect, and get it validated (a wrong
type, a missing field or broken JSON is one ``WireDecodeError``). The types bound the
nesting they accept, so a hostile body cannot recurse the decoder; a ``RecursionError``
from a body decoded into something looser is turned into the same error.
"""

from __future__ import annotations

import json
from typing import Any, Final, TypeVar, overload

import msgspec

T = TypeVar("T")

_ENCODER = msgspec.json.Encoder()


class WireDecodeError(ValueError):
    """A peer's body is not JSON of the expected shape (bad JSON, wrong or missing fields)."""


@overload
def decode(body: bytes | str, type: type[T]) -> T: ...
@overload
def decode(body: bytes | str, type: Any) -> Any: ...
def decode(body: bytes | str, type: Any) -> Any:
    """``body`` decoded into ``type`` (a Struct, a list of them, an enum …), validated.

    Unknown fields are ignored (a newer peer may send more); every field the type
    requires must be there with its type.

    Raises:
        WireDecodeError: not JSON, or not of ``type``'s shape.
    """
    try:
        return msgspec.json.decode(body, type=type)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        raise WireDecodeError(str(exc)) from None
    except RecursionError:
        raise WireDecodeError("JSON nested too deeply") from None


def encode(value: object) -> bytes:
    """``value`` (a Struct, or plain data holding them) as compact JSON bytes."""
    return _ENCODER.encode(value)


def to_builtins(value: object) -> Any:
    """``value`` as plain dicts and lists (for code that still wants ``json.dumps``)."""
    return msgspec.to_builtins(value)


# JSON from another process, read loosely --------------------------------------------

#: Deepest nesting of arrays and objects accepted in JSON from a socket (serde_json's).
MAX_JSON_DEPTH: Final = 128


class JSONTooDeep(ValueError):
    """JSON nested deeper than ``MAX_JSON_DEPTH`` (arrays and objects)."""


def decode_json(raw: bytes | str, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` with bounded nesting: what every reader of a peer's JSON uses.

    Raises:
        ValueError: not JSON (``json.JSONDecodeError``), not UTF-8 (``UnicodeDecodeError``)
            or nested deeper than ``max_depth`` (``JSONTooDeep``), never RecursionError.
    """
    try:
        data = json.loads(raw)
    except RecursionError:
        raise JSONTooDeep(f"JSON nested deeper than {max_depth} levels") from None
    # Nesting needs an opening bracket per level: most bodies are shallow by this count,
    # and the walk below is skipped.
    if isinstance(raw, bytes):
        opened = raw.count(b"[") + raw.count(b"{")
    else:
        opened = raw.count("[") + raw.count("{")
    if opened > max_depth and _is_deeper(data, max_depth):
        raise JSONTooDeep(f"JSON nested deeper than {max_depth} levels")
    return data


def _is_deeper(data: Any, max_depth: int) -> bool:
    """True when arrays and objects nest more than ``max_depth`` levels (no recursion)."""
    stack = [(data, 1)] if isinstance(data, list | dict) else []
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            return True
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, list | dict):
                stack.append((child, depth + 1))
    return False


__all__ = [
    "MAX_JSON_DEPTH",
    "JSONTooDeep",
    "WireDecodeError",
    "decode",
    "decode_json",
    "encode",
    "to_builtins",
]
