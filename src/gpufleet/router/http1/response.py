"""The answer to one request, as its reader sees it: wait for the head, then the body.

The connection (``connection._Connection``, llhttp's callbacks) fills a ``Response`` as
bytes arrive and wakes its one waiter; the proxy awaits ``wait_head``, then ``read`` or
``iter_chunks``. Reading asks the connection for more (``resume``), which is how
back-pressure is released.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Final

from gpufleet.router.http1.errors import AnswerBroken, Lost

if TYPE_CHECKING:
    from gpufleet.router.http1.connection import _Connection

# Where an answer is (the connection moves it on; package-private).
HEAD: Final = 0  # waiting for the answer's head (interim 1xx answers are skipped)
BODY: Final = 1
DONE: Final = 2


class Response:
    """The answer to one request: its head, then its body as it arrives."""

    __slots__ = (
        "_conn",
        "_exc",
        "_keep_s",
        "_names",
        "_no_body",
        "_queued",
        "_quiet",
        "_reused",
        "_state",
        "_to_eof",
        "_waiter",
        "chunks",
        "content_length",
        "has_head",
        "headers",
        "keep_alive",
        "received",
        "status",
    )

    def __init__(self, conn: _Connection, no_body: bool, reused: bool = False) -> None:
        self._conn = conn
        self._no_body = no_body
        self._reused = reused
        self._state = HEAD
        self._exc: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._queued = 0
        # Bytes read since the last body bytes (a head, chunk framing, trailers): bounded.
        self._quiet = 0
        self._to_eof = False
        self._keep_s: float | None = None
        self.chunks: deque[bytes] = deque()
        self.status = 0
        #: Header (name, value) pairs as sent (values UTF-8 where they are, else Latin-1).
        self.headers: list[tuple[str, str]] = []
        self._names: list[bytes] = []  # the header names in lower case
        self.content_length: int | None = None
        self.keep_alive = True
        #: True once the answer's head has arrived.
        self.has_head = False
        #: Bytes received from the socket for this answer so far (a watchdog compares it).
        self.received = 0

    async def wait_head(self) -> None:
        """Wait for the answer's head; on any failure or cancellation the connection closes.

        Raises:
            Lost: the connection closed before any answer byte.
            AnswerBroken: the head broke off or was not valid HTTP/1.1.
            BaseException: what ``fail`` was given.
        """
        try:
            while not self.has_head:
                if self._exc is not None:
                    raise self._exc
                await self._wait()
        except BaseException:
            self.close()
            raise

    def fail(self, exc: BaseException) -> None:
        """Make the waits on this answer raise ``exc`` and close the connection.

        For a timer or another task; does nothing once the answer is complete or failed.
        """
        if self._state == DONE or self._exc is not None:
            return
        self._exc = exc
        self._wake()
        self._conn.abort()

    @property
    def is_done(self) -> bool:
        """True once the whole body has arrived."""
        return self._state == DONE

    def header(self, lower_name: str) -> str | None:
        """The first value of a header (name given in lower case), if any."""
        names = self._names
        key = lower_name.encode()
        if key in names:
            return self.headers[names.index(key)][1]
        return None

    def header_values(self, lower_name: str) -> list[str]:
        """The values of every line of a header (name given in lower case), in order."""
        key = lower_name.encode()
        names = self._names
        if key not in names:  # the usual case, checked in C
            return []
        headers = self.headers
        return [headers[i][1] for i, name in enumerate(names) if name == key]

    async def read(self) -> bytes:
        """The whole body."""
        while self._state != DONE:
            await self._more()
        data = b"".join(self.chunks)
        self.chunks.clear()
        self._queued = 0
        return data

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body, piece by piece as it arrives."""
        chunks = self.chunks
        while True:
            if chunks:
                data = b"".join(chunks) if len(chunks) > 1 else chunks[0]
                chunks.clear()
                self._queued = 0
                yield data
                continue
            if self._state == DONE:
                return
            await self._more()

    def close(self) -> None:
        """Give up on the answer: close the connection unless the answer is complete."""
        if self._state != DONE:
            self._conn.abort()

    async def _wait(self) -> None:
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    async def _more(self) -> None:
        if self._exc is not None:
            raise self._exc
        self._conn.resume()  # the reader wants more: let the socket be read again
        await self._wait()
        if self._exc is not None and not self.chunks:
            raise self._exc

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _connection_lost(self, exc: BaseException | None) -> None:
        """The socket closed: the end of a read-to-close body, or a break."""
        if self._state != DONE and self._exc is None:
            if self._to_eof and exc is None:
                self._state = DONE  # a clean close ends a read-to-close body
            elif not self.received:
                why = f": {exc}" if exc else ""
                message = f"connection closed before any answer byte{why}"
                self._exc = Lost(message, reused=self._reused)
            else:
                self._exc = AnswerBroken(f"connection closed mid-answer: {exc}")
        self._wake()
