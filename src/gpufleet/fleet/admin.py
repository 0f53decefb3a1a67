"""The fleet's side of the router's admin API: keep the router's pool equal to the ready workers.

The router is started with the workers that were ready at that moment (``--worker``);
afterwards each change (a worker died, came back, moved, the router restarted) is
reconciled through ``/admin/workers`` with the token generated for this run.
:class:`PoolSync` remembers what the fleet itself did to the pool, so that it only
undoes its own drains: an operator's drain (``bench --scaling``, a person) of a healthy
worker is left alone, and an address no member has any more (a Ray actor restarted
elsewhere) is removed once its in-flight requests are done.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from gpufleet.errors import AdminError

log = logging.getLogger("gpufleet.fleet")

#: Router states in which an upstream takes no new requests for good (until added again).
_OUT = frozenset({"draining", "removed"})


@dataclass(frozen=True, slots=True)
class Upstream:
    """One entry of the router's pool as ``GET /admin/workers`` lists it."""

    id: str
    url: str
    pool: str
    state: str = "ready"
    labels: Mapping[str, str] = field(default_factory=dict)
    in_flight: int = 0


def _entries(data: Any) -> list[Upstream]:
    items = data.get("workers", []) if isinstance(data, Mapping) else data
    out = []
    for item in items if isinstance(items, list) else []:
        if isinstance(item, Mapping) and "id" in item and "url" in item:
            pool, state = str(item.get("pool", "default")), str(item.get("state", "ready"))
            raw = item.get("labels")
            labels = {str(k): str(v) for k, v in raw.items()} if isinstance(raw, Mapping) else {}
            url = str(item["url"]).rstrip("/")
            busy = item.get("in_flight")
            in_flight = busy if isinstance(busy, int) and not isinstance(busy, bool) else 0
            out.append(Upstream(str(item["id"]), url, pool, state, labels, in_flight))
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

    async def add(
        self, base: str, url: str, pool: str, labels: Mapping[str, str] | None = None
    ) -> None:
        """Add ``url`` to ``pool`` (again: back into rotation, or only new labels)."""
        body: dict[str, Any] = {"url": url, "pool": pool}
        if labels:
            body["labels"] = dict(labels)
        await self._call("POST", f"{base}/admin/workers", body)

    async def drain(self, base: str, upstream_id: str) -> None:
        """No new requests to ``upstream_id``; its in-flight ones finish."""
        await self._call("POST", f"{base}/admin/workers/{upstream_id}/drain")

    async def remove(self, base: str, upstream_id: str) -> None:
        """Take ``upstream_id`` out of the router's pool for good."""
        await self._call("DELETE", f"{base}/admin/workers/{upstream_id}")


@dataclass(frozen=True, slots=True)
class Membership:
    """One fleet member as the router should see it: where, ready or not, its labels."""

    url: str
    pool: str
    is_ready: bool
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SyncResult:
    """What one :meth:`PoolSync.sync` did; ``pending``: a stale upstream still finishing."""

    admitted: int = 0
    drained: int = 0
    removed: int = 0
    pending: bool = False

    @property
    def changed(self) -> bool:
        """True when the router's pool was changed."""
        return bool(self.admitted or self.drained or self.removed)


class PoolSync:
    """Keeps one router's pool in step with the fleet's members, and remembers its own acts.

    Only upstreams whose fleet state changed are touched: a member that went down is
    drained (after its labels say so), and re-admitted when ready again only if the
    fleet drained it; a drain the fleet did not make is an operator's and stays. An
    address that belongs to no member any more is drained and, once nothing is in
    flight on it (or ``stale_drain_s`` after it went stale), removed and forgotten.
    Upstreams the fleet never managed (added by hand) are left alone.
    """

    def __init__(
        self,
        admin: RouterAdmin,
        *,
        stale_drain_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._admin = admin
        self._stale_drain_s = stale_drain_s
        self._clock = clock
        #: Every address a member had, until it is removed from the router.
        self.managed: set[str] = set()
        #: Addresses the fleet drained because their member was down.
        self.drained: set[str] = set()
        #: Addresses no member has any more: when that was first seen.
        self.stale_since: dict[str, float] = {}

    async def sync(self, base: str, members: Iterable[Membership]) -> SyncResult:
        """One reconciliation of the router at ``base`` with ``members``."""
        by_url = {m.url.rstrip("/"): m for m in members}
        self.managed.update(by_url)
        have = await self._admin.list(base)
        admitted = drained = removed = 0
        pending = False
        present = {(u.pool, u.url) for u in have if u.state != "removed"}
        for up in have:
            if up.url not in self.managed or up.state == "removed":
                continue
            member = by_url.get(up.url)
            if member is None:  # its member moved on (a restarted Ray actor)
                if await self._retire(base, up):
                    removed += 1
                else:
                    pending = True
                    drained += int(up.state != "draining")
                continue
            if member.pool != up.pool:
                continue
            labels = dict(member.labels)
            if not member.is_ready:
                if up.state not in _OUT:
                    if labels and labels != up.labels:  # say why it left (crash-looping…)
                        await self._admin.add(base, up.url, up.pool, labels)
                    await self._admin.drain(base, up.id)
                    self.drained.add(up.url)
                    drained += 1
            elif up.state in _OUT:
                if up.url in self.drained:  # back from the fleet's own drain
                    await self._admin.add(base, up.url, up.pool, labels)
                    self.drained.discard(up.url)
                    admitted += 1
                # else: an operator drained a healthy member; theirs to undo.
            else:
                self.drained.discard(up.url)
                if labels and labels != up.labels:  # started with --worker, or restarts
                    await self._admin.add(base, up.url, up.pool, labels)
        for url, member in sorted(by_url.items()):
            if member.is_ready and (member.pool, url) not in present:
                await self._admin.add(base, url, member.pool, member.labels)
                self.drained.discard(url)
                admitted += 1
        # Stale addresses the router no longer lists (it restarted) are simply forgotten.
        listed = {u.url for u in have if u.state != "removed"}
        for url in [u for u in self.managed if u not in by_url and u not in listed]:
            self._forget(url)
        return SyncResult(admitted, drained, removed, pending)

    async def _retire(self, base: str, up: Upstream) -> bool:
        """Drain a stale upstream; remove it once idle or overdue. True when removed."""
        now = self._clock()
        since = self.stale_since.setdefault(up.url, now)
        if up.in_flight > 0 and now - since < self._stale_drain_s:
            if up.state != "draining":
                await self._admin.drain(base, up.id)
            return False
        await self._admin.remove(base, up.id)
        log.info("router pool: removed %s (no member serves there any more)", up.url)
        self._forget(up.url)
        return True

    def _forget(self, url: str) -> None:
        self.managed.discard(url)
        self.drained.discard(url)
        self.stale_since.pop(url, None)


__all__ = ["AdminError", "Membership", "PoolSync", "RouterAdmin", "SyncResult", "Upstream"]
