"""Request bodies for each route, and answers turned back into outputs.

``/predict`` (and any other path) takes ``{"input", "seed"?, "parameters"?}``; the
OpenAI-shaped routes take their own bodies: ``/v1/images/generations`` gets
``{"prompt", "n": 1, "response_format": "b64_json", "seed"?, ...parameters}`` and
``/v1/embeddings`` gets ``{"input", ...parameters}``.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from gpufleet.client._transport import Reply
from gpufleet.client.items import Item
from gpufleet.errors import RequestFailed

IMAGES_PATH = "/v1/images/generations"
EMBEDDINGS_PATH = "/v1/embeddings"


def build_body(path: str, item: Item) -> dict[str, Any]:
    """The JSON body that sends ``item`` to ``path``."""
    params = dict(item.parameters or {})
    if path.rstrip("/").endswith(IMAGES_PATH):
        body: dict[str, Any] = {"prompt": item.input, "n": 1, "response_format": "b64_json"}
        if item.seed is not None:
            body["seed"] = item.seed
        return {**body, **params}
    if path.rstrip("/").endswith(EMBEDDINGS_PATH):
        return {"input": item.input, **params}
    body = {"input": item.input}
    if item.seed is not None:
        body["seed"] = item.seed
    if params:
        body["parameters"] = params
    return body


def decode_reply(path: str, reply: Reply) -> tuple[Any, str]:
    """Turn a 2xx answer into ``(output, content_type)``; bytes for binary outputs.

    Raises:
        RequestFailed: (retryable) the answer is not what the route promises.
    """
    if reply.content_type and reply.content_type != "application/json":
        return reply.body, reply.content_type  # raw bytes, e.g. Accept: image/png
    try:
        data = json.loads(reply.body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestFailed(
            f"POST {path}: the answer is not JSON ({len(reply.body)} bytes)", retryable=True
        ) from exc
    if path.rstrip("/").endswith(IMAGES_PATH):
        return _openai_image(path, data)
    if isinstance(data, dict) and "output" in data:
        if data.get("output_encoding") == "base64":
            content_type = str(data.get("content_type") or "application/octet-stream")
            return _b64(path, data["output"]), content_type
        return data["output"], "application/json"
    return data, "application/json"


def _openai_image(path: str, data: Any) -> tuple[Any, str]:
    try:
        b64 = data["data"][0]["b64_json"]
    except (KeyError, IndexError, TypeError) as exc:
        raise RequestFailed(
            f"POST {path}: the answer has no data[0].b64_json", retryable=True
        ) from exc
    return _b64(path, b64), "image/png"


def _b64(path: str, value: Any) -> bytes:
    try:
        return base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestFailed(f"POST {path}: the output is not valid base64", retryable=True) from exc
