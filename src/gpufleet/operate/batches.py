"""What ``gpufleet batches`` asks a router's Batch API, and how it prints the answers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from gpufleet.errors import RequestFailed
from gpufleet.wire.http import PeerClient

#: Seconds one call may take (a download: per chunk read).
TIMEOUT_S = 30.0
#: The largest JSON answer read (a page of batches).
MAX_ANSWER_BYTES = 16 << 20


class BatchesClient:
    """The Files and Batches calls of one router (``url`` without ``/v1``)."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.base = url.rstrip("/") + "/v1"
        self._http = PeerClient(session=session, timeout_s=TIMEOUT_S, max_bytes=MAX_ANSWER_BYTES)

    async def list(self, *, limit: int, after: str | None = None) -> dict[str, Any]:
        """One page of batches, newest first."""
        query = f"?limit={limit}" + (f"&after={after}" if after else "")
        return dict(await self._call("GET", f"/batches{query}"))

    async def show(self, batch_id: str) -> dict[str, Any]:
        """One batch."""
        return dict(await self._call("GET", f"/batches/{batch_id}"))

    async def cancel(self, batch_id: str) -> dict[str, Any]:
        """Cancel one batch; the batch as it is now."""
        return dict(await self._call("POST", f"/batches/{batch_id}/cancel"))

    async def download(self, file_id: str, dest: Path) -> int:
        """Write a file's contents to ``dest`` (a temp file renamed in); the bytes written.

        Raises:
            RequestFailed: no such file, or the router did not answer.
        """
        url = f"{self.base}/files/{file_id}/content"
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
        size = 0
        try:
            try:
                async with self.session.get(url) as resp:
                    if resp.status != 200:
                        text = (await resp.read())[:300].decode("utf-8", "replace")
                        raise RequestFailed(f"GET {url}: HTTP {resp.status} {text}")
                    while True:
                        async with asyncio.timeout(TIMEOUT_S):
                            chunk = await resp.content.read(1 << 20)
                        if not chunk:
                            break
                        await asyncio.to_thread(_write_all, fd, chunk)
                        size += len(chunk)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise RequestFailed(f"GET {url}: {exc or type(exc).__name__}") from exc
            await asyncio.to_thread(os.fsync, fd)
            os.close(fd)
            fd = -1
            os.replace(name, dest)
        finally:
            if fd >= 0:
                os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)
        return size

    async def _call(self, method: str, path: str) -> Any:
        return await self._http.call(method, self.base + path)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _when(ts: int | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def batch_rows(batches: list[dict[str, Any]]) -> list[str]:
    """One line per batch for ``gpufleet batches list``."""
    rows = [f"{'ID':<38} {'STATUS':<11} {'DONE':>13} {'FAILED':>6}  {'CREATED':<19}  ENDPOINT"]
    for b in batches:
        counts = b.get("request_counts") or {}
        done = f"{counts.get('completed', 0)}/{counts.get('total', 0)}"
        rows.append(
            f"{b['id']:<38} {b['status']:<11} {done:>13} {counts.get('failed', 0):>6}  "
            f"{_when(b.get('created_at')):<19}  {b.get('endpoint', '')}"
        )
    return rows


def batch_lines(batch: dict[str, Any]) -> list[str]:
    """What ``gpufleet batches show`` prints about one batch."""
    counts = batch.get("request_counts") or {}
    total = counts.get("total", 0)
    done = counts.get("completed", 0) + counts.get("failed", 0)
    share = f" ({100 * done / total:.1f}%)" if total else ""
    lines = [
        f"id          {batch['id']}",
        f"status      {batch['status']}",
        f"endpoint    {batch.get('endpoint')}",
        f"input       {batch.get('input_file_id')}",
        f"requests    {done}/{total} done{share}: {counts.get('completed', 0)} ok, "
        f"{counts.get('failed', 0)} failed",
        f"output      {batch.get('output_file_id') or '-'}",
        f"errors      {batch.get('error_file_id') or '-'}",
        f"created     {_when(batch.get('created_at'))}",
        f"expires     {_when(batch.get('expires_at'))}",
    ]
    for key in ("in_progress_at", "completed_at", "cancelled_at", "expired_at", "failed_at"):
        if batch.get(key):
            lines.append(f"{key.removesuffix('_at'):<12}{_when(batch[key])}")
    problems = (batch.get("errors") or {}).get("data") or []
    lines += [f"error       {p.get('code')}: {p.get('message')}" for p in problems]
    if batch.get("metadata"):
        lines += [f"metadata    {k}={v}" for k, v in sorted(batch["metadata"].items())]
    return lines
