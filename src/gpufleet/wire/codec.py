"""One way to put a wire type on a socket and one way to read it back.

Producers build a ``msgspec.Struct`` from ``gpufleet.wire`` and ``encode`` it; consumers
``decode`` a peer's body once, into the type they expect, and get it validated (a wrong
type, a missing field or broken JSON is one ``WireDecodeError``). The types bound the
nesting they accept, so a hostile body cannot recurse the decoder; a ``RecursionError``
from a body decoded into something looser is turned into the same error.
"""

from __future__ import annotations

from typing import Any, TypeVar, overload

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


__all__ = ["WireDecodeError", "decode", "encode", "to_builtins"]
