"""The client side of a router's admin API (``/admin/workers``), for the fleet and the tools.

The server is ``gpufleet.router.admin.AdminAPI``; this is its one client: the fleet's pool
sync (``fleet/admin.py``) and ``bench --scaling`` both call it. Every call carries the
router's admin token (and only these calls do: a ``PeerClient`` shared with ``/stats``
reads of workers never sends it there), goes through :class:`~gpufleet.wire.http.PeerClient`
(budget, no redirects, bounded answer) and decodes the router's answer once into the
wire types (``wire.UpstreamView``, ``wire.UpstreamList``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, TypeVar
from urllib.parse import quote

from gpufleet.errors import RequestFailed
from gpufleet.wire.admin import DEFAULT_POOL, AddUpstream, UpstreamList
from gpufleet.wire.http import PeerClient
from gpufleet.wire.stats import UpstreamView

T = TypeVar("T")

#: Where the admin API lives on a router.
ADMIN_PATH: Final = "/admin/workers"


class AdminClient:
    """``/admin/workers…`` of the router at ``url``, authenticated with its Bearer ``token``."""

    def __init__(self, http: PeerClient, url: str, token: str) -> None:
        self.http = http
        self.url = url.rstrip("/")
        self._base = self.url + ADMIN_PATH
        self._token = token

    async def list(self) -> list[UpstreamView]:
        """Every upstream the router knows (draining ones included)."""
        return (await self._call("GET", "", into=UpstreamList)).workers

    async def add(
        self,
        url: str,
        pool: str = DEFAULT_POOL,
        *,
        weight: float | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> UpstreamView:
        """Add ``url`` to ``pool`` (again: back into rotation, new weight or labels)."""
        body = AddUpstream(
            url=url, pool=pool, weight=weight, labels=dict(labels) if labels else None
        )
        return await self._call("POST", "", into=UpstreamView, body=body)

    async def drain(self, upstream_id: str) -> UpstreamView:
        """No new requests to ``upstream_id``; its in-flight ones finish."""
        return await self._call("POST", f"/{quote(upstream_id, safe='')}/drain", into=UpstreamView)

    async def remove(self, upstream_id: str) -> UpstreamView:
        """Take ``upstream_id`` out of the router's pool for good."""
        return await self._call("DELETE", f"/{quote(upstream_id, safe='')}", into=UpstreamView)

    async def _call(self, method: str, path: str, *, into: type[T], body: object = None) -> T:
        try:
            return await self.http.call(
                method, self._base + path, into=into, json=body, token=self._token
            )
        except RequestFailed as exc:
            if exc.status in {401, 403}:
                raise RequestFailed(
                    f"{method} {self._base}{path}: the router refused the admin token",
                    status=exc.status,
                ) from exc
            if exc.status == 404 and not path:
                raise RequestFailed(
                    f"{self.url} has no admin API (start the router with an admin token)",
                    status=404,
                ) from exc
            raise


__all__ = ["ADMIN_PATH", "AdminClient"]
