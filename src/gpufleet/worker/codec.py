"""Request bodies in, response bodies out: validation that names the problem, base64 bytes.

Everything here is pure and raises ``BadRequest`` with a message a caller can act on;
``app.py`` turns that into 400 (not JSON) or 422 (JSON of the wrong shape).
"""

from __future__ import annotations

import base64
import json
import math
import time
from dataclasses import dataclass
from typing import Any

from gpufleet import wire
from gpufleet.errors import BadRequest, Unprocessable

#: Top-level fields of ``POST /predict`` besides ``input``/``inputs``.
PREDICT_FIELDS = frozenset({"input", "inputs", "seed", "parameters", "stream"})


def parse_json(raw: bytes) -> Any:
    """Decode a JSON body.

    Raises:
        BadRequest: empty, not UTF-8, not JSON (with where it broke), or nested deeper
            than ``wire.MAX_JSON_DEPTH``.
    """
    if not raw.strip():
        raise BadRequest('the request body is empty; send JSON like {"input": ...}')
    try:
        return wire.decode_json(raw)
    except wire.JSONTooDeep as exc:
        raise BadRequest(f"the request body is {exc}") from None
    except UnicodeDecodeError as exc:
        raise BadRequest(f"the request body is not UTF-8: {exc.reason}") from None
    except json.JSONDecodeError as exc:
        raise BadRequest(
            f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None


@dataclass(frozen=True, slots=True)
class PredictRequest:
    """A validated ``POST /predict`` body."""

    #: One per-item body per input: ``{"input": x, "seed"?: ..., "parameters"?: ...}``.
    items: list[dict[str, Any]]
    #: ``{"input": x}`` (answer ``output``) rather than ``{"inputs": [...]}``.
    single: bool
    stream: bool


def parse_predict(body: Any, *, allow_unknown: bool) -> PredictRequest:
    """Validate a /predict body and split it into per-item bodies.

    Raises:
        Unprocessable: not an object, both or neither of input/inputs, an empty or
            non-list ``inputs``, a wrong-typed ``seed``/``parameters``/``stream``, or an
            unknown field (unless the model reads the body itself).
    """
    if not isinstance(body, dict):
        raise Unprocessable(f"the body must be a JSON object, got {_json_type(body)}")
    has_one, has_many = "input" in body, "inputs" in body
    if has_one == has_many:
        raise Unprocessable('send exactly one of "input" (one item) or "inputs" (a list)')
    unknown = sorted(set(body) - PREDICT_FIELDS)
    if unknown and not allow_unknown:
        raise Unprocessable(
            f"unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(PREDICT_FIELDS))}"
        )
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise Unprocessable(f'"seed" must be an integer, got {_json_type(seed)}')
    params = body.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise Unprocessable(f'"parameters" must be an object, got {_json_type(params)}')
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise Unprocessable(f'"stream" must be true or false, got {_json_type(stream)}')
    if has_many:
        inputs = body["inputs"]
        if not isinstance(inputs, list):
            raise Unprocessable(f'"inputs" must be a list, got {_json_type(inputs)}')
        if not inputs:
            raise Unprocessable('"inputs" is empty; send at least one input')
        if stream:
            raise Unprocessable('"stream": true takes one "input", not "inputs"')
    else:
        inputs = [body["input"]]
    extra = {k: v for k, v in body.items() if k not in ("input", "inputs", "stream")}
    items = [{"input": x, **extra} for x in inputs]
    return PredictRequest(items=items, single=has_one, stream=stream)


def encode_output(value: Any, content_type: str) -> tuple[Any, bool]:
    """A model's encoded output as JSON; bytes become base64. Returns (value, was_bytes)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii"), True
    return value, False


def predict_answer(outputs: list[Any], *, single: bool, content_type: str) -> dict[str, Any]:
    """The JSON answer of /predict for the model's encoded outputs."""
    encoded = [encode_output(o, content_type) for o in outputs]
    any_bytes = any(b for _, b in encoded)
    values = [v for v, _ in encoded]
    answer: dict[str, Any] = {"output": values[0]} if single else {"outputs": values}
    if any_bytes:
        answer["output_encoding"] = "base64"
        answer["content_type"] = content_type
    return answer


def deadline_from_headers(
    timeout_value: str | None,
    deadline_value: str | None,
    *,
    now: float,
    default_s: float,
    wall_now: float | None = None,
) -> float:
    """The request's deadline on the monotonic clock whose current time is ``now``.

    ``X-Request-Timeout`` (seconds left) wins over ``X-Request-Deadline`` (epoch seconds);
    with neither, the worker's own ``request_timeout_s`` applies.

    Raises:
        BadRequest: a header that is not a finite number.
    """
    if timeout_value is not None:
        seconds = _finite(timeout_value, "X-Request-Timeout")
        return now + min(seconds, default_s)
    if deadline_value is not None:
        epoch = _finite(deadline_value, "X-Request-Deadline")
        left = epoch - (time.time() if wall_now is None else wall_now)
        return now + min(left, default_s)
    return now + default_s


def _finite(text: str, header: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise BadRequest(f"{header} must be a number of seconds, got {text!r}") from None
    if not math.isfinite(value):
        raise BadRequest(f"{header} must be finite, got {text!r}")
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
    }.get(type(value), type(value).__name__)
