"""The fleet's side of the router's admin API: keep the router's pool equal to the ready workers.

The router is started with the workers that were ready at that moment (``--worker``);
afterwards each change (a worker died, came back, the router restarted) is reconciled
through ``/admin/workers`` with the token generated for this run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

log = logging.getLogger("gpufleet.fleet")


class AdminError(Exception):
    """The router's admin API did not answer as expected."""


@dataclass(frozen=True, slots=True)
class Upstream:
    """One entry of the router's pool as ``GET /admin/workers`` lists it."""

    id: str
    url: str
    pool: str
    state: str = "ready"
    labels: Mapping[str, str] = field(default_factory=dict)


def _entries(data: Any) -> list[Upstream]:
    items = data.get("workers", []) if isinstance(data, Mapping) else data
    out = []
    for item in items if isinstance(items, list) else []:
        if isinstance(item, Mapping) and "id" in item and "url" in item:
            pool, state = str(item.get("pool", "default")), str(item.get("state", "ready"))
            raw = item.get("labels")
            labels = {str(k): str(v) for k, v in raw.items()} if isinstance(raw, Mapping) else {}
            url = str(item["url"]).rstrip("/")
            out.append(Upstream(str(item["id"]), url, pool, state, labels))
    return out


class RouterAdmin:
    """A small client of the router's ``/admin/workers`` API."""

    def __init__(self, session: aiohttp.ClientSession, token: str, timeout_s: float = 5.0):
        self._session = session
        self._headers = {"Authorization": f"Bearer {token}"}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def _call(self, method: str, url: str, body: Any | None = None) -> Any:
        try:
            async with self._session.request(
                method, url, json=body, headers=self._headers, timeout=self._timeout
            ) as resp:
                if resp.status >= 300:
                    text = (await resp.text())[:200]
                    raise AdminError(f"{method} {url}: {resp.status} {text}")
                if resp.content_type == "application/json":
                    return await resp.json()
                return None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AdminError(f"{method} {url}: {exc!r}") from exc

    async def list(self, base: str) -> list[Upstream]:
        """The router's upstreams."""
        return _entries(await self._call("GET", f"{base}/admin/workers"))

    async def sync(
        self,
        base: str,
        desired: Iterable[tuple[str, str]],
        managed: set[str],
        labels: Mapping[str, Mapping[str, str]] | None = None,
    ) -> tuple[int, int]:
        """Make the ready workers ``(pool, url)`` the router's; (admitted, drained).

        A managed worker that is down is drained, not removed, so the router keeps its
        counters and re-admits it (after a probe) when it is added again. Upstreams the
        fleet does not manage (added by hand) are left alone. ``labels`` (by URL) say
        where each worker runs; the router shows them in ``/stats``.
        """
        labels = {url.rstrip("/"): dict(v) for url, v in (labels or {}).items()}
        want = {(pool, url.rstrip("/")) for pool, url in desired}
        have = await self.list(base)
        admitted = drained = 0
        for up in have:
            if up.url in managed and (up.pool, up.url) not in want and up.state != "draining":
                await self._call("POST", f"{base}/admin/workers/{up.id}/drain")
                drained += 1
        live = [u for u in have if u.state not in {"draining", "removed"}]
        active = {(u.pool, u.url) for u in live}
        for pool, url in sorted(want - active):
            body: dict[str, Any] = {"url": url, "pool": pool}
            if labels.get(url):
                body["labels"] = labels[url]
            await self._call("POST", f"{base}/admin/workers", body)
            admitted += 1
        for u in live:
            # Started with --worker (no labels), or moved: adding again only updates them.
            if (u.pool, u.url) in want and labels.get(u.url, u.labels) != u.labels:
                body = {"url": u.url, "pool": u.pool, "labels": labels[u.url]}
                await self._call("POST", f"{base}/admin/workers", body)
        return admitted, drained


__all__ = ["AdminError", "RouterAdmin", "Upstream"]
