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

import msgspec

from gpufleet.errors import AdminError, RequestFailed
from gpufleet.wire import UpstreamState, UpstreamView
from gpufleet.wire.admin_client import AdminClient
from gpufleet.wire.http import PeerClient

log = logging.getLogger("gpufleet.fleet")

#: Router states in which an upstream takes no new requests for good (until added again).
_OUT = frozenset({UpstreamState.DRAINING, UpstreamState.REMOVED})


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
        http: PeerClient,
        token: str,
        *,
        stale_drain_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._http = http
        self._token = token
        self._stale_drain_s = stale_drain_s
        self._clock = clock
        #: Every address a member had, until it is removed from the router.
        self.managed: set[str] = set()
        #: Addresses the fleet drained because their member was down.
        self.drained: set[str] = set()
        #: Addresses no member has any more: when that was first seen.
        self.stale_since: dict[str, float] = {}

    async def sync(self, base: str, members: Iterable[Membership]) -> SyncResult:
        """One reconciliation of the router at ``base`` with ``members``.

        Raises:
            AdminError: the router's admin API did not answer as expected (the next sync
                starts from what the router lists then).
        """
        admin = AdminClient(self._http, base, self._token)
        try:
            return await self._sync(admin, members)
        except RequestFailed as exc:
            raise AdminError(exc.message) from exc

    async def _sync(self, admin: AdminClient, members: Iterable[Membership]) -> SyncResult:
        by_url = {m.url.rstrip("/"): m for m in members}
        self.managed.update(by_url)
        have = [_normal(u) for u in await admin.list()]
        admitted = drained = removed = 0
        pending = False
        present = {(u.pool, u.url) for u in have if u.state != UpstreamState.REMOVED}
        for up in have:
            if up.url not in self.managed or up.state == UpstreamState.REMOVED:
                continue
            member = by_url.get(up.url)
            if member is None:  # its member moved on (a restarted Ray actor)
                if await self._retire(admin, up):
                    removed += 1
                else:
                    pending = True
                    drained += int(up.state != UpstreamState.DRAINING)
                continue
            if member.pool != up.pool:
                continue
            labels = dict(member.labels)
            if not member.is_ready:
                if up.state not in _OUT:
                    if labels and labels != up.labels:  # say why it left (crash-looping…)
                        await admin.add(up.url, up.pool, labels=labels)
                    await admin.drain(up.id)
                    self.drained.add(up.url)
                    drained += 1
            elif up.state in _OUT:
                if up.url in self.drained:  # back from the fleet's own drain
                    await admin.add(up.url, up.pool, labels=labels)
                    self.drained.discard(up.url)
                    admitted += 1
                # else: an operator drained a healthy member; theirs to undo.
            else:
                self.drained.discard(up.url)
                if labels and labels != up.labels:  # started with --worker, or restarts
                    await admin.add(up.url, up.pool, labels=labels)
        for url, member in sorted(by_url.items()):
            if member.is_ready and (member.pool, url) not in present:
                await admin.add(url, member.pool, labels=member.labels)
                self.drained.discard(url)
                admitted += 1
        # Stale addresses the router no longer lists (it restarted) are simply forgotten.
        listed = {u.url for u in have if u.state != UpstreamState.REMOVED}
        for url in [u for u in self.managed if u not in by_url and u not in listed]:
            self._forget(url)
        return SyncResult(admitted, drained, removed, pending)

    async def _retire(self, admin: AdminClient, up: UpstreamView) -> bool:
        """Drain a stale upstream; remove it once idle or overdue. True when removed."""
        now = self._clock()
        since = self.stale_since.setdefault(up.url, now)
        if up.in_flight > 0 and now - since < self._stale_drain_s:
            if up.state != UpstreamState.DRAINING:
                await admin.drain(up.id)
            return False
        await admin.remove(up.id)
        log.info("router pool: removed %s (no member serves there any more)", up.url)
        self._forget(up.url)
        return True

    def _forget(self, url: str) -> None:
        self.managed.discard(url)
        self.drained.discard(url)
        self.stale_since.pop(url, None)


def _normal(up: UpstreamView) -> UpstreamView:
    """``up`` with its URL as members name theirs (no trailing ``/``)."""
    url = up.url.rstrip("/")
    return up if url == up.url else msgspec.structs.replace(up, url=url)


__all__ = ["AdminError", "Membership", "PoolSync", "SyncResult"]
