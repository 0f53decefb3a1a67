"""A lean HTTP/1.1 client for the proxy's hot path: keep-alive connections, streamed answers.

aiohttp's client costs the router well over 100 µs of CPU per request (URL objects,
header multidicts, tracing, timers); this one writes a request head that the proxy built
as bytes, parses the answer with llhttp (``httptools``, the parser under uvicorn and
aiohttp) and hands the body on as it arrives. It speaks just what a proxy needs: one
request at a time per connection, ``Content-Length``, chunked and read-to-close bodies,
keep-alive, TLS.

By topic: ``framing`` checks an answer's head and where its body ends; ``connection``
feeds llhttp and applies back-pressure; ``response`` is the reader's side (wait for the
head, read the body); ``connection_pool`` reuses connections while they are fresh.

Framing is strict: whatever could make two parties disagree on where an answer ends (two
``Content-Length`` headers, ``Transfer-Encoding`` with ``Content-Length`` or other than
``chunked``, a status outside 100..599, bytes nobody asked for) is ``AnswerBroken`` and
the connection is closed, never reused.

Errors say whether the request can have run upstream: ``NotSent`` (no connection, or it
had closed before the request was written) cannot have; ``Lost`` (written, then the
connection closed before any answer byte) may have; ``AnswerBroken`` (the answer began,
then broke or was not HTTP) did. Nothing here sends a request twice: the caller decides.
A caller that stops waiting (a cancelled task, ``Response.fail``) closes the connection,
so the upstream sees the client go.
"""

from gpufleet.router.http1.connection import HIGH_WATER
from gpufleet.router.http1.connection_pool import KEEPALIVE_S, ConnectionPool, UpstreamConnections
from gpufleet.router.http1.errors import AnswerBroken, Lost, NotSent
from gpufleet.router.http1.framing import MAX_HEAD, MAX_HEADERS
from gpufleet.router.http1.response import Response

__all__ = [
    "HIGH_WATER",
    "KEEPALIVE_S",
    "MAX_HEAD",
    "MAX_HEADERS",
    "AnswerBroken",
    "ConnectionPool",
    "Lost",
    "NotSent",
    "Response",
    "UpstreamConnections",
]
