"""The OpenAI-shaped routes: ``GET /v1/models``, ``POST /v1/embeddings`` and
``POST /v1/images/generations``.

(``POST /v1/chat/completions`` lives in ``chat.py``.) A body's ``model``, when given, must
name what this worker serves (the model's ``name``, or the name it was started with:
``minilm``), else 404 ``model_not_found``; errors on ``/v1/…`` are OpenAI's error object
(``app._as_openai``).

Each is mounted for every worker but answers 404 unless the model's ``kind`` matches, so
a router in front can tell "wrong model" from "wrong URL". Items go through the same
batcher as ``/predict``.
"""

from __future__ import annotations

import base64
import re
import time
from typing import Any

import numpy as np
from aiohttp import web

from gpufleet.errors import ModelError, ModelNotFound, NotServed, Unprocessable
from gpufleet.worker.app import (
    SERVICE,
    deadline_of,
    decode_items,
    json_response,
    read_json,
)
from gpufleet.worker.service import WorkerService

_MAX_IMAGES = 16
_SIZE = re.compile(r"^(\d{1,4})x(\d{1,4})$")


def require_kind(service: WorkerService, kind: str, route: str) -> None:
    """Raises NotServed (404) unless the worker is ready and serves a model of ``kind``."""
    service.check_ready()
    info = service.info
    if info is None or info.kind != kind:
        have = info.kind if info else "unknown"
        raise NotServed(f"{route} needs a model of kind {kind!r}; this worker serves {have!r}")


def model_name(service: WorkerService) -> str:
    """The name this worker's model goes by (its ``name``; before loading, its spec)."""
    return service.info.name if service.info else service.cfg.model


def check_model(service: WorkerService, model: Any) -> None:
    """Refuse a ``model`` this worker does not serve; a missing one is this worker's.

    Raises:
        Unprocessable: ``model`` is not a string.
        ModelNotFound: it names another model (404 ``model_not_found``).
    """
    if model is None:
        return
    if not isinstance(model, str):
        raise Unprocessable('"model" must be a string')
    if model not in {model_name(service), service.cfg.model}:
        raise ModelNotFound(
            f"The model {model!r} does not exist here; this worker serves {model_name(service)!r}"
        )


async def models(request: web.Request) -> web.Response:
    """OpenAI ``GET /v1/models``: the one model this worker serves."""
    service = request.app[SERVICE]
    created = int(time.time() - (service.clock() - service.started_at))
    card = {"id": model_name(service), "object": "model", "created": created}
    return json_response({"object": "list", "data": [{**card, "owned_by": "gpufleet"}]})


def as_object(body: Any) -> dict[str, Any]:
    """``body`` when it is a JSON object; raises Unprocessable (422) otherwise."""
    if not isinstance(body, dict):
        raise Unprocessable("the body must be a JSON object")
    return body


async def embeddings(request: web.Request) -> web.Response:
    """OpenAI ``/v1/embeddings``: ``input`` is a string or a list of strings."""
    service = request.app[SERVICE]
    require_kind(service, "embeddings", "/v1/embeddings")
    with service.request():
        deadline = deadline_of(request)
        body = as_object(await read_json(request))
        check_model(service, body.get("model"))
        texts = body.get("input")
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not texts:
            raise Unprocessable('"input" must be a string or a non-empty list of strings')
        if not all(isinstance(t, str) for t in texts):
            raise Unprocessable('"input" must hold strings (token arrays are not supported)')
        fmt = body.get("encoding_format", "float")
        if fmt not in ("float", "base64"):
            raise Unprocessable('"encoding_format" must be "float" or "base64"')
        if body.get("dimensions") is not None:
            raise Unprocessable('"dimensions" is not supported by this model')
        custom = bool(service.info and service.info.custom_decode)
        payloads = decode_items(service, [{"input": t} for t in texts], custom=custom)
        vectors = await service.submit(payloads, deadline)
        data = [
            {"object": "embedding", "index": i, "embedding": _vector(v, fmt)}
            for i, v in enumerate(vectors)
        ]
        # Word-piece counts need the tokenizer; whitespace words are an honest lower bound.
        words = sum(len(t.split()) for t in texts)
        model = service.info.name if service.info else service.cfg.model
        return json_response(
            {
                "object": "list",
                "data": data,
                "model": body.get("model") or model,
                "usage": {"prompt_tokens": words, "total_tokens": words},
            }
        )


def _vector(value: Any, fmt: str) -> Any:
    if fmt == "float":
        return value
    return base64.b64encode(np.asarray(value, dtype="<f4").tobytes()).decode("ascii")


async def images(request: web.Request) -> web.Response:
    """OpenAI ``/v1/images/generations``: ``prompt``, ``n``, ``seed``, ``size``, b64_json."""
    service = request.app[SERVICE]
    require_kind(service, "images", "/v1/images/generations")
    with service.request():
        deadline = deadline_of(request)
        body = as_object(await read_json(request))
        check_model(service, body.get("model"))
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise Unprocessable('"prompt" must be a non-empty string')
        n = body.get("n", 1)
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= _MAX_IMAGES:
            raise Unprocessable(f'"n" must be an integer in 1..{_MAX_IMAGES}')
        seed = body.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise Unprocessable('"seed" must be an integer')
        if body.get("response_format", "b64_json") != "b64_json":
            raise Unprocessable('only "response_format": "b64_json" is supported (no URLs)')
        params: dict[str, Any] = {}
        size = body.get("size")
        if size is not None:
            match = _SIZE.match(size) if isinstance(size, str) else None
            if match is None:
                raise Unprocessable('"size" must look like "256x256"')
            params = {"width": int(match[1]), "height": int(match[2])}
        items = [
            {"input": prompt, "seed": seed + i, **({"parameters": params} if params else {})}
            for i in range(n)
        ]
        payloads = decode_items(service, items, custom=True)
        outputs = await service.submit(payloads, deadline)
        data = []
        for out in outputs:
            if not isinstance(out, (bytes, bytearray)):
                raise ModelError("the model answered something other than image bytes")
            data.append({"b64_json": base64.b64encode(bytes(out)).decode("ascii")})
        return json_response({"created": int(time.time()), "data": data})
