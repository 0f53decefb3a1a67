"""The router's Files and Batches routes as ``generate --server-side`` calls them: one
``PeerClient`` (budget, size bound, ``RequestFailed``), answers decoded into
``wire.batches`` Structs, a file's contents read line by line as they arrive.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Final, TypeVar

import aiohttp

from gpufleet.errors import RequestFailed
from gpufleet.wire.batches import BatchObject, FileObject
from gpufleet.wire.http import PeerClient

#: Budget of one API call (the upload has the job's request timeout instead).
CALL_S: Final = 30.0
T = TypeVar("T")


class BatchApi:
    """The router's Files and Batches routes, through one PeerClient; ``RequestFailed``."""

    def __init__(self, http: PeerClient, base: str, timeout: float) -> None:
        self.http = http
        self.base = base
        self.timeout = timeout

    async def call(
        self,
        method: str,
        path: str,
        into: type[T],
        *,
        data: aiohttp.FormData | None = None,
        json_body: object = None,
        budget: float = CALL_S,
    ) -> T:
        """One call that must answer 2xx, its JSON decoded into ``into``."""
        try:
            return await self.http.call(
                method, self.base + path, into=into, data=data, json=json_body, timeout_s=budget
            )
        except RequestFailed as exc:
            if exc.status == 404 and path.startswith("/v1/files"):
                raise RequestFailed(
                    exc.message + " (no Batch API there: point --endpoint at a router started"
                    " by `gpufleet up`, or by `gpufleet router --batch-store DIR`)",
                    status=exc.status,
                ) from exc
            raise

    async def get_batch(self, batch_id: str) -> BatchObject:
        """The batch as the router has it now."""
        return await self.call("GET", f"/v1/batches/{batch_id}", BatchObject)

    async def submit(self, jsonl: bytes, path: str, created_by: str) -> BatchObject:
        """Upload ``jsonl`` as a batch input file and start a batch of it on ``path``."""
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field("file", jsonl, filename="prompts.jsonl", content_type="application/jsonl")
        uploaded = await self.call("POST", "/v1/files", FileObject, data=form, budget=self.timeout)
        body = {
            "input_file_id": uploaded.id,
            "endpoint": path,
            "completion_window": "24h",
            "metadata": {"created_by": created_by},
        }
        return await self.call("POST", "/v1/batches", BatchObject, json_body=body)

    async def lines(self, file_id: str) -> AsyncIterator[bytes]:
        """The file's lines, read as they arrive (a large output is never held whole)."""
        url = f"{self.base}/v1/files/{file_id}/content"
        try:
            # A streamed read on the client's session: the file may be larger than any
            # answer read whole, and its budget is per read, not for the whole file.
            async with self.http.session.get(
                url, timeout=aiohttp.ClientTimeout(total=None, sock_read=self.timeout)
            ) as resp:
                if resp.status != 200:
                    raise RequestFailed(f"GET {url}: HTTP {resp.status}", status=resp.status)
                rest = b""
                async for chunk in resp.content.iter_chunked(1 << 16):
                    *whole, rest = (rest + chunk).split(b"\n")
                    for line in whole:
                        if line.strip():
                            yield line
                if rest.strip():
                    yield rest
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise RequestFailed(f"GET {url}: {type(exc).__name__}: {exc}") from exc


__all__ = ["CALL_S", "BatchApi"]
