"""What a request asks the simulated engine for, read from OpenAI and SGLang bodies.

Anything malformed raises :class:`BadRequest` (the answer is a 400). Unknown fields are
ignored, as engines do; ``model`` may name anything (the engine serves one model).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gpufleet.testing.llm.tokens import render_chat


class BadRequest(Exception):
    """The body cannot be served: the answer is a 400 with this message."""


@dataclass(frozen=True, slots=True)
class Job:
    """One generation: the prompt text, how many tokens, and how to answer."""

    prompt: str
    max_tokens: int
    #: The caller named max_tokens: the finish reason is "length", else "stop".
    explicit_max: bool
    stream: bool
    include_usage: bool


def _int_field(body: dict[str, Any], names: tuple[str, ...], default: int) -> tuple[int, bool]:
    for name in names:
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise BadRequest(f"{name} must be a positive integer, got {value!r}")
        return value, True
    return default, False


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BadRequest(f"{name} must be a boolean, got {value!r}")
    return value


def _common(body: object) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    n = body.get("n")
    if n not in (None, 1):
        raise BadRequest("only n=1 is supported")
    return body


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise BadRequest("stream_options must be an object")
    return _flag(options, "include_usage")


def _content(content: object) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for part in content:
            if not isinstance(part, dict) or not isinstance(part.get("text", ""), str):
                raise BadRequest("a content part must be an object with a text")
            parts.append(part.get("text", ""))
        return "".join(parts)
    raise BadRequest("message content must be a string, a list of parts or null")


def chat_job(body: object, default_max: int) -> Job:
    """``POST /v1/chat/completions``: the messages rendered to one prompt."""
    body = _common(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list")
    pairs: list[tuple[str, str]] = []
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest("each message must be an object with a role")
        pairs.append((message["role"], _content(message.get("content"))))
    max_tokens, explicit = _int_field(body, ("max_completion_tokens", "max_tokens"), default_max)
    stream = _flag(body, "stream")
    return Job(render_chat(pairs), max_tokens, explicit, stream, stream and _include_usage(body))


def completion_job(body: object, default_max: int) -> Job:
    """``POST /v1/completions``: one prompt string (a list of one string is accepted)."""
    body = _common(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise BadRequest("prompt must be one string")
    max_tokens, explicit = _int_field(body, ("max_tokens",), default_max)
    stream = _flag(body, "stream")
    return Job(prompt, max_tokens, explicit, stream, stream and _include_usage(body))


def generate_job(body: object, default_max: int) -> Job:
    """SGLang's ``POST /generate``: ``text`` and ``sampling_params.max_new_tokens``."""
    body = _common(body)
    text = body.get("text")
    if not isinstance(text, str):
        raise BadRequest("text must be one string")
    params = body.get("sampling_params") or {}
    if not isinstance(params, dict):
        raise BadRequest("sampling_params must be an object")
    max_tokens, explicit = _int_field(params, ("max_new_tokens",), default_max)
    return Job(text, max_tokens, explicit, _flag(body, "stream"), False)
