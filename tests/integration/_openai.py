"""The official ``openai`` client for tests, closed after each test (its sockets with it)."""

from __future__ import annotations

import openai

_OPEN: list[openai.OpenAI] = []


def openai_client(base_url: str, *, timeout: float = 30.0) -> openai.OpenAI:
    """An ``openai.OpenAI`` for ``base_url`` (…/v1), closed when the test ends."""
    client = openai.OpenAI(base_url=base_url, api_key="x", max_retries=0, timeout=timeout)
    _OPEN.append(client)
    return client


def close_all() -> None:
    """Close every client made by the test that just ended."""
    while _OPEN:
        _OPEN.pop().close()
