"""Small JSON-over-HTTP helpers shared by the operating tools (aiohttp, with budgets)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from gpufleet.errors import RequestFailed


def bearer(token: str | None) -> dict[str, str]:
    """The Authorization header of the router's admin API (empty without a token)."""
    return {"Authorization": f"Bearer {token}"} if token else {}


async def request_json(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout_s: float = 5.0,
) -> Any:
    """Send one request and return its decoded JSON answer.

    Raises:
        RequestFailed: nothing answered, the status is not 2xx, or the body is not JSON.
    """
    try:
        async with (
            asyncio.timeout(timeout_s),
            session.request(method, url, json=body, headers=headers) as resp,
        ):
            raw = await resp.read()
            status = resp.status
    except TimeoutError as exc:
        raise RequestFailed(f"{method} {url}: no answer in {timeout_s:g}s") from exc
    except aiohttp.ClientError as exc:
        raise RequestFailed(f"{method} {url}: {exc}") from exc
    if not 200 <= status < 300:
        text = raw[:300].decode("utf-8", "replace")
        raise RequestFailed(f"{method} {url}: HTTP {status} {text}", status=status)
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise RequestFailed(f"{method} {url}: answer is not JSON", status=status) from exc


async def get_json(session: aiohttp.ClientSession, url: str, *, timeout_s: float = 5.0) -> Any:
    """``GET url`` and return its JSON answer (see :func:`request_json`)."""
    return await request_json(session, "GET", url, timeout_s=timeout_s)
