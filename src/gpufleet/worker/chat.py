"""OpenAI ``POST /v1/chat/completions`` for models of kind ``chat``.

A request's ``messages`` become one item: the per-item body handed to the model's
``decode`` is ``{"input": messages, "seed"?: int, "parameters": {"max_tokens", …}}``, so
the default ``decode`` gives ``predict`` the message list and a model that wants the
sampling parameters overrides ``decode``. ``predict`` answers one string per item (the
assistant's reply). With ``"stream": true`` the item goes to ``predict_stream`` instead:
each string piece becomes a ``chat.completion.chunk`` event, then ``data: [DONE]``.

A model that counts its tokens says so: ``predict`` (and each ``predict_stream`` piece)
may answer ``{"content": str, "usage": {"prompt_tokens": n, "completion_tokens": m}}``
instead of a plain string, and ``usage`` then reports those counts (a stream's last piece
that carries ``usage`` sets the totals). Otherwise token counts are whitespace words (the
worker has no tokenizer): an honest lower bound, like ``/v1/embeddings``.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gpufleet.errors import ModelError, Unprocessable
from gpufleet.worker.app import SERVICE, deadline_of, decode_items, json_response, read_json
from gpufleet.worker.openai_routes import as_object, check_model, require_kind
from gpufleet.worker.streaming import DONE, serve_stream, sse

ROUTE = "/v1/chat/completions"
_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
#: Sampling fields passed to the model in ``parameters`` when given.
_PARAMETERS = (
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "presence_penalty",
    "frequency_penalty",
)
_FIELDS = frozenset(
    {"model", "messages", "seed", "stream", "stream_options", "n", "user", *_PARAMETERS}
)


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A validated chat completion request."""

    messages: list[dict[str, Any]]
    parameters: dict[str, Any]
    seed: int | None
    stream: bool
    include_usage: bool
    model: str | None


def _number(body: dict[str, Any], key: str, lo: float, hi: float, *, integer: bool) -> None:
    value = body.get(key)
    if value is None:
        return
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if not ok or isinstance(value, bool) or not lo <= value <= hi:
        kind = "an integer" if integer else "a number"
        raise Unprocessable(f'"{key}" must be {kind} in {lo:g}..{hi:g}, got {value!r}')


def _text(content: Any, where: str) -> str:
    """A message's content as text: a string, or a list of ``{"type": "text"}`` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        for p in content
    ):
        return "".join(p["text"] for p in content)
    raise Unprocessable(f"{where}.content must be a string or a list of text parts")


def parse_chat(body: Any) -> ChatRequest:
    """Validate an OpenAI chat completion body.

    Raises:
        Unprocessable: a missing or empty ``messages``, a message without a known ``role`` or
            a text ``content``, an out-of-range parameter, ``n`` other than 1, or an unknown
            field (named).
    """
    body = as_object(body)
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise Unprocessable(
            f"unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(_FIELDS))}"
        )
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise Unprocessable('"messages" must be a non-empty list of {"role", "content"}')
    messages = []
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict) or m.get("role") not in _ROLES:
            raise Unprocessable(f"{where} needs a role in {', '.join(sorted(_ROLES))}")
        messages.append({"role": m["role"], "content": _text(m.get("content"), where)})
    _number(body, "max_tokens", 1, 1 << 20, integer=True)
    _number(body, "max_completion_tokens", 1, 1 << 20, integer=True)
    _number(body, "temperature", 0, 2, integer=False)
    _number(body, "top_p", 0, 1, integer=False)
    _number(body, "presence_penalty", -2, 2, integer=False)
    _number(body, "frequency_penalty", -2, 2, integer=False)
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise Unprocessable(f'"seed" must be an integer, got {seed!r}')
    if body.get("n", 1) != 1:
        raise Unprocessable('"n" must be 1 (send one request per completion)')
    stop = body.get("stop")
    if stop is not None and not (
        isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(s, str) for s in stop))
    ):
        raise Unprocessable('"stop" must be a string or a list of strings')
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise Unprocessable('"stream" must be true or false')
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise Unprocessable('"stream_options" must be an object')
    model = body.get("model")
    return ChatRequest(
        messages=messages,
        parameters={k: body[k] for k in _PARAMETERS if body.get(k) is not None},
        seed=seed,
        stream=stream,
        include_usage=bool(options.get("include_usage", False)),
        model=model if isinstance(model, str) else None,
    )


def _words(text: str) -> int:
    return len(text.split())


def _reply(output: Any) -> tuple[str, tuple[int, int] | None]:
    """The reply text and the model's own ``(prompt, completion)`` token counts, if given."""
    if isinstance(output, str):
        return output, None
    if isinstance(output, dict) and isinstance(output.get("content"), str):
        usage = output.get("usage")
        counts = None
        if isinstance(usage, dict):
            prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
            if isinstance(prompt, int) and isinstance(completion, int):
                counts = (prompt, completion)
        return output["content"], counts
    raise ModelError(
        "a chat model must answer a string or {'content': str, 'usage'?: {...}}, "
        f"got {type(output).__name__}"
    )


async def completions(request: web.Request) -> web.StreamResponse:
    """OpenAI chat completions: one completion per request, or its chunks as SSE."""
    service = request.app[SERVICE]
    require_kind(service, "chat", ROUTE)
    with service.request():
        deadline = deadline_of(request)
        req = parse_chat(await read_json(request))
        check_model(service, req.model)
        item: dict[str, Any] = {"input": req.messages, "parameters": req.parameters}
        if req.seed is not None:
            item["seed"] = req.seed
        custom = bool(service.info and service.info.custom_decode)
        payload = decode_items(service, [item], custom=custom)[0]
        name = req.model or (service.info.name if service.info else service.cfg.model)
        ident = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        prompt_words = sum(_words(m["content"]) for m in req.messages)
        if req.stream:
            return await _stream(
                request, req, payload, deadline, ident, created, name, prompt_words
            )
        text, counted = _reply((await service.submit([payload], deadline))[0])
        done = _words(text)
        if counted is not None:
            prompt_words, done = counted
        return json_response(
            {
                "id": ident,
                "object": "chat.completion",
                "created": created,
                "model": name,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_words,
                    "completion_tokens": done,
                    "total_tokens": prompt_words + done,
                },
            }
        )


async def _stream(
    request: web.Request,
    req: ChatRequest,
    payload: Any,
    deadline: float,
    ident: str,
    created: int,
    name: str,
    prompt_words: int,
) -> web.StreamResponse:
    service = request.app[SERVICE]
    base = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": name}
    completion_words = 0
    counted: tuple[int, int] | None = None

    def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return sse({**base, "choices": [choice]})

    def render(piece: Any) -> bytes:
        nonlocal completion_words, counted
        text, usage = _reply(piece)
        completion_words += _words(text)
        if usage is not None:
            counted = usage
        return chunk({"content": text}, None)

    def tail() -> bytes:
        out = chunk({}, "stop")
        if req.include_usage:
            prompt, completion = counted or (prompt_words, completion_words)
            usage = {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            }
            out += sse({**base, "choices": [], "usage": usage})
        return out + DONE

    head = chunk({"role": "assistant", "content": ""}, None)
    return await serve_stream(
        request, service, payload, deadline, render=render, head=head, tail=tail
    )
