"""``GET /v1/models`` answered by the router itself, and routing by the ``model`` field.

OpenAI clients and frameworks often ask ``/v1/models`` first. Proxied, it would only
reach one upstream of the default pool; answered here, it is the union over every pool:
each ready upstream's own ``GET /v1/models`` (an engine's model cards pass as they are),
else a gpufleet worker's ``/stats`` ``model``. A card says which pools serve its model
(``pools``); one id appears once. What an upstream serves is kept for ``ttl_s``, so a
client polling the list does not fan out to every upstream each time.

With more than one pool the catalog is refreshed after each health round
(``refresh_soon``), and ``pool_for`` tells the proxy which pool serves a body's
``model``: a ``/v1/*`` request that path routing left to the default pool goes to a pool
that serves its model instead (path routing, where it names a pool, stays).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec

from gpufleet.errors import RequestFailed
from gpufleet.router.pool import Registry
from gpufleet.router.upstream import READY, Upstream
from gpufleet.wire.http import PeerClient

#: A model card of OpenAI's ``/v1/models`` list.
Card = dict[str, Any]
_S = TypeVar("_S", bound=msgspec.Struct)


class _Model(msgspec.Struct):
    """A body's ``model`` field (a request's, or a worker's ``/stats``); the rest ignored."""

    model: str | None = None


class _ModelList(msgspec.Struct):
    """OpenAI's ``/v1/models`` answer: its cards pass as they are, so each is plain JSON."""

    data: list[Any] = msgspec.field(default_factory=list)


_MODEL = msgspec.json.Decoder(_Model)


def model_of(body: bytes) -> str | None:
    """The ``model`` field of a JSON body, if it has a string one."""
    try:
        return _MODEL.decode(body).model
    except (msgspec.DecodeError, RecursionError):  # not JSON, or nested past the limit
        return None


def _cards(answer: _ModelList | None) -> list[Card]:
    """The model cards of a ``/v1/models`` answer (those with a string ``id``)."""
    if answer is None:
        return []
    return [dict(c) for c in answer.data if isinstance(c, dict) and isinstance(c.get("id"), str)]


class ModelCatalog:
    """The models of every ready upstream of ``registry``, as OpenAI's model list."""

    def __init__(
        self,
        registry: Registry,
        *,
        ttl_s: float = 10.0,
        timeout_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self._ttl_s = ttl_s
        self._clock = clock
        self._known: dict[str, tuple[float, list[Card]]] = {}
        self._http = PeerClient(timeout_s=timeout_s)
        #: Which pools serve each model id, as of the last listing.
        self.pools_of: dict[str, tuple[str, ...]] = {}
        self._refresh: asyncio.Task[Any] | None = None
        self._refreshed = -1e18

    def refresh_soon(self) -> None:
        """List the models again in the background, at most once per ``ttl_s``."""
        now = self._clock()
        if (self._refresh is not None and not self._refresh.done()) or (
            now - self._refreshed < self._ttl_s
        ):
            return
        self._refreshed = now
        self._refresh = asyncio.get_running_loop().create_task(self.listing())

    def pool_for(self, model: str, current: str) -> str:
        """The pool to send a request for ``model`` to: ``current`` when it serves it."""
        pools = self.pools_of.get(model)
        if not pools or current in pools:
            return current
        return pools[0]

    async def aclose(self) -> None:
        """Close its connections."""
        if self._refresh is not None and not self._refresh.done():
            self._refresh.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresh
        await self._http.aclose()

    async def listing(self) -> dict[str, Any]:
        """``{"object": "list", "data": [cards]}`` over every ready upstream."""
        ready = [u for u in self.registry.all() if u.state == READY]
        found = await asyncio.gather(*(self._served_by(u) for u in ready))
        by_id: dict[str, Card] = {}
        for upstream, cards in zip(ready, found, strict=True):
            for card in cards:
                mine = by_id.setdefault(
                    card["id"],
                    {"object": "model", "created": 0, "owned_by": "gpufleet", **card, "pools": []},
                )
                if upstream.pool not in mine["pools"]:
                    mine["pools"].append(upstream.pool)
        live = {u.base for u in self.registry.all()}
        for base in [b for b in self._known if b not in live]:
            del self._known[base]
        self.pools_of = {mid: tuple(card["pools"]) for mid, card in by_id.items()}
        return {"object": "list", "data": list(by_id.values())}

    async def _served_by(self, upstream: Upstream) -> list[Card]:
        now = self._clock()
        kept = self._known.get(upstream.base)
        if kept is not None and now - kept[0] < self._ttl_s:
            return kept[1]
        cards = await self._ask(upstream)
        if cards:  # an upstream that said nothing is asked again next time
            self._known[upstream.base] = (now, cards)
        return cards

    async def _ask(self, upstream: Upstream) -> list[Card]:
        cards = _cards(await self._get(upstream.base + "/v1/models", _ModelList))
        if not cards and upstream.is_gpufleet:  # a worker from before /v1/models
            stats = await self._get(upstream.base + "/stats", _Model)
            if stats is not None and stats.model is not None:
                cards = [{"id": stats.model}]
        return cards

    async def _get(self, url: str, into: type[_S]) -> _S | None:
        """``GET url`` decoded into ``into``, or None (no answer, not 2xx, not that JSON)."""
        try:
            return await self._http.get(url, into=into)
        except RequestFailed:
            return None


__all__ = ["ModelCatalog", "model_of"]
