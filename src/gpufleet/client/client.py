"""``gpufleet.Client``: bulk jobs and single calls over one or many endpoints.

::

    async with Client(["http://gpu0:8000", "http://gpu1:8000"], seed=42) as client:
        async for result in client.stream(prompts):
            ...
    results = Client("http://router:8080").run_sync(prompts)   # from a plain script
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import uuid
from collections.abc import AsyncGenerator, Callable, Coroutine, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import msgspec

from gpufleet import wire
from gpufleet.client._payload import build_body, decode_reply
from gpufleet.client._transport import HttpTransport, Transport, check
from gpufleet.client.dispatch import Dispatcher, ProbeOutcome
from gpufleet.client.endpoints import Endpoint, merge_endpoints
from gpufleet.client.items import Answer, Item, Result, as_items
from gpufleet.client.round_robin import RoundRobinDispatcher
from gpufleet.config.client import DEFAULT_CONCURRENCY, MAX_AUTO_CONCURRENCY, ClientConfig
from gpufleet.errors import ClientClosed, ClientError, ConfigError, JobFailed, RequestFailed

log = logging.getLogger("gpufleet.client")
T = TypeVar("T")

#: Budget of a ``GET /health`` probe or a ``GET /stats`` look at an endpoint.
_PROBE_TIMEOUT_S = 5.0


class Client:
    """Sends items to endpoints with pull-based dispatch, retries and fail-over.

    Args:
        endpoints: one URL (a router) or many (workers or routers); duplicates are merged
            with a warning. None takes ``config.endpoints``.
        config: the job's settings; keyword ``settings`` override single fields
            (``Client(urls, seed=42, per_endpoint_concurrency=4)``).
        transport: the HTTP seam (tests pass a ``MemoryTransport``).
    """

    def __init__(
        self,
        endpoints: str | Sequence[str] | None = None,
        *,
        config: ClientConfig | None = None,
        transport: Transport | None = None,
        **settings: Any,
    ) -> None:
        cfg = config or ClientConfig()
        if endpoints is None:
            urls: Sequence[str] = cfg.endpoints
        else:
            urls = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        try:
            cfg = dataclasses.replace(cfg, endpoints=tuple(merge_endpoints(list(urls))), **settings)
        except TypeError as exc:
            raise ConfigError(f"unknown Client setting: {exc}") from None
        if not cfg.endpoints:
            raise ConfigError("no endpoints: give at least one URL (--endpoint)")
        self.config = cfg
        self.endpoints = [
            Endpoint(url, i, cfg.per_endpoint_concurrency or DEFAULT_CONCURRENCY)
            for i, url in enumerate(cfg.endpoints)
        ]
        self._transport: Transport = transport or HttpTransport()
        self._sized = False
        self._closed = False
        self._cond: asyncio.Condition | None = None
        self._active = 0

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close pooled connections; the client cannot be used afterwards."""
        self._closed = True
        await self._transport.aclose()

    async def stream(self, items: Iterable[Item | Any]) -> AsyncGenerator[Result, None]:
        """Yield one ``Result`` per item as each finishes (failures included, never raised).

        To stop early, wrap it in ``contextlib.aclosing`` so in-flight requests end at once.
        """
        if self._closed:
            raise ClientClosed("this Client was closed")
        work = as_items(items, seed=self.config.seed)
        if not work:
            return  # nothing to send: do not even look at the endpoints
        await self._size_slots()
        self._log_endpoints(len(work))
        if self._cond is None or self._active == 0:
            self._cond = asyncio.Condition()  # bound to this loop (sync calls make new ones)
        kind = RoundRobinDispatcher if self.config.dispatch == "round-robin" else Dispatcher
        dispatcher = kind(
            self.endpoints,
            self.config,
            self._attempt,
            self._probe,
            cond=self._cond,
            fresh=self._active == 0,
        )
        self._active += 1
        try:
            async with contextlib.aclosing(dispatcher.run(work)) as results:
                async for result in results:
                    yield result
        finally:
            self._active -= 1

    async def run(self, items: Iterable[Item | Any]) -> list[Result]:
        """Run every item; the results come back in the items' order."""
        results = [r async for r in self.stream(items)]
        return sorted(results, key=lambda r: r.index)

    async def predict(
        self, value: Any, *, seed: int | None = None, parameters: Mapping[str, Any] | None = None
    ) -> Any:
        """Send one input (with retries and fail-over) and return its output.

        Raises:
            JobFailed: every attempt failed, or the endpoint refused the input (4xx).
        """
        item = Item(input=value, id="predict", seed=seed, parameters=parameters)
        (result,) = await self.run([item])
        if not result.ok:
            raise JobFailed(result.error or "the request failed")
        return result.output

    def run_sync(self, items: Iterable[Item | Any]) -> list[Result]:
        """``run`` for plain scripts (no event loop running in this thread)."""
        return _blocking(lambda: self._then_close_session(self.run(items)))

    def predict_sync(
        self, value: Any, *, seed: int | None = None, parameters: Mapping[str, Any] | None = None
    ) -> Any:
        """``predict`` for plain scripts (no event loop running in this thread)."""
        return _blocking(
            lambda: self._then_close_session(self.predict(value, seed=seed, parameters=parameters))
        )

    async def _then_close_session(self, coro: Coroutine[Any, Any, T]) -> T:
        # A session belongs to the loop that made it; each sync call has its own loop.
        try:
            return await coro
        finally:
            await self._transport.aclose()

    async def _attempt(self, ep: Endpoint, item: Item, budget_s: float) -> Answer:
        path = self.config.path
        headers = {
            wire.TIMEOUT_HEADER: f"{budget_s:.3f}",
            wire.REQUEST_ID_HEADER: uuid.uuid4().hex,
        }
        body = build_body(path, item)
        try:
            json.dumps(body)
        except (TypeError, ValueError) as exc:
            # One bad item fails alone, with its reason; the job goes on.
            raise RequestFailed(f"item {item.id} cannot be sent as JSON: {exc}") from exc
        reply = await self._transport.request(
            "POST",
            ep.url + path,
            json_body=body,
            headers=headers,
            budget_s=budget_s,
        )
        check(reply, f"POST {ep.url}{path}")
        output, content_type = decode_reply(path, reply)
        return Answer(output, content_type, reply.header(wire.UPSTREAM_HEADER))

    async def _probe(self, ep: Endpoint) -> ProbeOutcome:
        try:
            reply = await self._transport.request(
                "GET", ep.url + "/health", budget_s=min(_PROBE_TIMEOUT_S, self.config.timeout)
            )
        except RequestFailed as exc:
            ep.last_error = exc.message
            return "silent"
        # A server without /health (404) that answers at all is reachable.
        return "up" if reply.status < 500 and reply.status != 429 else "down"

    async def _size_slots(self) -> None:
        """Size each endpoint's slots from its /stats (see ``ClientConfig``)."""
        if self._sized:
            return
        self._sized = True
        await asyncio.gather(*(self._size_one(ep) for ep in self.endpoints))

    async def _size_one(self, ep: Endpoint) -> None:
        try:
            reply = await self._transport.request("GET", ep.url + "/stats", budget_s=2.0)
        except RequestFailed as exc:
            # Nothing answered: it must pass a /health probe before it takes an item, so
            # an endpoint that never answers costs probes, not requests that hang.
            ep.needs_probe, ep.cooldown_until, ep.last_error = True, 0.0, exc.message
            log.warning("%s; items wait until it answers", exc.message)
            return
        if reply.status != 200:
            return
        try:  # whose /stats this is says which shape to decode it into, once
            server = wire.decode(reply.body, _Server).server
            if server == wire.ROUTER_SERVER_NAME:
                self._size_router(ep, wire.decode(reply.body, wire.RouterStats))
            elif server == wire.WORKER_SERVER_NAME:
                self._size_worker(ep, wire.decode(reply.body, wire.WorkerStats))
        except wire.WireDecodeError:
            return  # not a gpufleet /stats of this version: its slots stay as they are

    def _size_router(self, ep: Endpoint, stats: wire.RouterStats) -> None:
        if not stats.workers:
            return
        fixed = self.config.per_endpoint_concurrency
        if fixed is not None:
            ep.slots = fixed * len(stats.workers)
        else:
            total = sum(w.max_outstanding or DEFAULT_CONCURRENCY for w in stats.workers)
            ep.slots = min(max(total, DEFAULT_CONCURRENCY), MAX_AUTO_CONCURRENCY)
        log.info(
            "endpoint %s is a router over %d workers: %d slots",
            ep.url,
            len(stats.workers),
            ep.slots,
        )

    def _size_worker(self, ep: Endpoint, stats: wire.WorkerStats) -> None:
        batch = stats.max_batch_size
        if self.config.per_endpoint_concurrency is not None or batch < 1:
            return
        room = stats.max_queue or MAX_AUTO_CONCURRENCY
        ep.slots = max(DEFAULT_CONCURRENCY, min(2 * batch, room, MAX_AUTO_CONCURRENCY))
        log.info(
            "endpoint %s is a gpufleet worker (max batch %d): %d slots", ep.url, batch, ep.slots
        )

    def _log_endpoints(self, n_items: int) -> None:
        log.info("Using %d endpoint(s) for %d item(s):", len(self.endpoints), n_items)
        for ep in self.endpoints:
            log.info("  %d. %s (%d in flight)", ep.index + 1, ep.url, ep.slots)


class _Server(msgspec.Struct):
    """Only the ``server`` field of a /stats answer: whose it is (a router, a worker)."""

    server: str = ""


def _blocking(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    raise ClientError("the *_sync methods cannot run inside an event loop; await the async ones")
