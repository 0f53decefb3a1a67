"""The router's admin API, as used by ``bench --scaling``: list, drain, add, remove."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp

from gpufleet.errors import RequestFailed
from gpufleet.operate._http import bearer, request_json


@dataclass(frozen=True, slots=True)
class Upstream:
    """One upstream as the admin API lists it."""

    id: str
    url: str
    pool: str = "default"
    weight: float | None = None
    state: str = "unknown"


class AdminAPI:
    """``/admin/workers…`` of one router, authenticated with its Bearer token."""

    def __init__(self, session: aiohttp.ClientSession, url: str, token: str) -> None:
        self._session = session
        self._base = url.rstrip("/") + "/admin/workers"
        self._headers = bearer(token)

    async def _call(self, method: str, path: str = "", body: Any = None) -> Any:
        try:
            return await request_json(
                self._session, method, self._base + path, body=body, headers=self._headers
            )
        except RequestFailed as exc:
            if exc.status in {401, 403}:
                raise RequestFailed(
                    "the router refused the admin token (check --admin-token)", status=exc.status
                ) from exc
            if exc.status == 404 and not path:
                raise RequestFailed(
                    "the router has no admin API (start it with an admin token)", status=404
                ) from exc
            raise

    async def list(self) -> list[Upstream]:
        """Every upstream the router knows."""
        data = await self._call("GET")
        items = data.get("workers", []) if isinstance(data, dict) else data
        if not isinstance(items, list):
            raise RequestFailed("GET /admin/workers did not answer a list of workers")
        return [_upstream(item) for item in items if isinstance(item, dict)]

    async def drain(self, worker_id: str) -> None:
        """Stop sending new requests to ``worker_id`` (in-flight ones finish)."""
        await self._call("POST", f"/{worker_id}/drain")

    async def remove(self, worker_id: str) -> None:
        """Forget ``worker_id``."""
        await self._call("DELETE", f"/{worker_id}")

    async def add(self, up: Upstream) -> Upstream:
        """Add ``up``'s URL again (same pool and weight); returns the new entry."""
        body: dict[str, Any] = {"url": up.url, "pool": up.pool}
        if up.weight is not None:
            body["weight"] = up.weight
        data = await self._call("POST", body=body)
        if isinstance(data, dict) and isinstance(data.get("worker"), dict):
            data = data["worker"]
        return _upstream({**body, **data}) if isinstance(data, dict) else up


def _upstream(item: dict[str, Any]) -> Upstream:
    weight = item.get("weight")
    return Upstream(
        id=str(item.get("id") or item.get("url")),
        url=str(item.get("url", "")),
        pool=str(item.get("pool") or "default"),
        weight=float(weight) if isinstance(weight, (int, float)) else None,
        state=str(item.get("state") or "unknown"),
    )
