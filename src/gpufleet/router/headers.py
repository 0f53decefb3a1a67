"""The headers a proxied request and its answer carry on, as RFC 9110 §7.6.1 asks.

Hop-by-hop headers go, and so does every header named in any ``Connection`` header (both
ways); ``X-Forwarded-For`` is appended to, ``X-Forwarded-Host``/``-Proto`` set when
absent, ``X-Request-Id`` and ``Content-Length`` set by the router; an ``Authorization``
that carries the admin token never leaves the router. Request heads are built as bytes.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from multidict import CIMultiDict, istr

from gpufleet import wire
from gpufleet.router.http1 import Response

#: Hop-by-hop headers (RFC 9110 §7.6.1), lower case, as bytes (request) and str (answer).
_HOP_BY_HOP = (
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
)
#: Request headers not passed on as they came: hop-by-hop, those the proxy sets itself.
_REQUEST_DROP = frozenset(
    h.encode()
    for h in (
        *_HOP_BY_HOP,
        "host",
        "content-length",
        "expect",
        "x-forwarded-for",
        "x-request-id",
        "x-request-timeout",
        wire.FIRST_BYTE_TIMEOUT_HEADER.lower(),
    )
)
_RESPONSE_DROP = frozenset((*_HOP_BY_HOP, "content-length", "x-request-id"))
_XFF = b"x-forwarded-for"
_XFH = b"x-forwarded-host"
_XFP = b"x-forwarded-proto"
_CONNECTION = istr("Connection")
_CONNECTION = istr("Connection")
_RID = istr(wire.REQUEST_ID_HEADER)
_RID_LINE = f"{wire.REQUEST_ID_HEADER}: ".encode()
_UPSTREAM = wire.UPSTREAM_HEADER
_AUTHORIZATION = b"authorization"
#: The client's credentials: not passed on unless ``--forward-auth``.
_CREDENTIALS = frozenset({_AUTHORIZATION, b"cookie"})
_CRLF = b"\r\n"
#: Methods whose empty body is still announced (``Content-Length: 0``).
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def request_headers(
    request: web.Request,
    rid: str,
    body: bytes | None,
    is_admin: Callable[[bytes], bool] | None = None,
    *,
    forward_auth: bool = False,
) -> bytes:
    """The header lines passed upstream (all but Host and the deadline), as bytes.

    ``Authorization`` and ``Cookie`` stay here unless ``forward_auth``; even then one
    carrying the admin token (``is_admin``) is dropped.
    """
    drop = _REQUEST_DROP if forward_auth else _REQUEST_DROP | _CREDENTIALS
    named = request.headers.getall(_CONNECTION, ())
    if named:
        drop = drop | {
            t.strip().lower().encode("latin-1", "replace")
            for value in named
            for t in value.split(",")
        }
    lines: list[bytes] = []
    prior: bytes | None = None
    has_xfh = has_xfp = False
    for name, value in request.raw_headers:
        lower = name.lower()
        if lower in drop:
            if lower == _XFF:
                prior = value if prior is None else prior + b", " + value
            continue
        if lower == _XFH:
            has_xfh = True
        elif lower == _XFP:
            has_xfp = True
        elif lower == _AUTHORIZATION and is_admin is not None and is_admin(value):
            continue  # the admin token never leaves the router (issue 13)
        lines += (name, b": ", value, _CRLF)
    peer = (request.remote or "").encode("latin-1")
    lines += (b"X-Forwarded-For: ", prior + b", " + peer if prior else peer, _CRLF)
    if not has_xfh:
        lines += (b"X-Forwarded-Host: ", header_bytes(request.host), _CRLF)
    if not has_xfp:
        lines += (b"X-Forwarded-Proto: ", request.scheme.encode("latin-1"), _CRLF)
    lines += (_RID_LINE, rid.encode("latin-1"), _CRLF)
    if body is not None:
        lines += (b"Content-Length: ", str(len(body)).encode(), _CRLF)
    elif request.method in _BODY_METHODS:
        lines.append(b"Content-Length: 0\r\n")
    return b"".join(lines)


def header_bytes(value: str) -> bytes:
    """A header value the client sent, back as bytes (aiohttp decoded it as UTF-8)."""
    try:
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return value.encode("ascii", "replace")


def response_headers(resp: Response, rid: str, upstream_id: str) -> CIMultiDict[str]:
    """The answer's headers for the client: hop-by-hop ones out, ours in."""
    drop = _RESPONSE_DROP
    named = resp.header_values("connection")
    if named:
        drop = drop | {t.strip().lower() for value in named for t in value.split(",")}
    out: CIMultiDict[str] = CIMultiDict(
        [(name, value) for name, value in resp.headers if name.lower() not in drop]
    )
    out[_RID] = rid
    out[_UPSTREAM] = upstream_id
    return out
