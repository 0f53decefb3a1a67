"""Where an answer's head says its body ends, checked strictly.

Whatever could make two parties disagree on where an answer ends (two ``Content-Length``
headers, ``Transfer-Encoding`` with ``Content-Length`` or other than ``chunked``, a status
outside 100..599, a head too large) fails the answer with ``AnswerBroken``; the
connection is then closed, never reused. llhttp already refuses a second
``Content-Length`` and non-digits in it, and takes only token characters in names.
"""

from __future__ import annotations

from typing import Final

from gpufleet.router.http1.errors import AnswerBroken
from gpufleet.router.http1.response import BODY, DONE, Response

#: Largest answer head accepted (its header lines, or the bytes before its blank line).
MAX_HEAD: Final = 64 * 1024
#: Most header lines accepted in an answer head.
MAX_HEADERS: Final = 100
#: How every answer begins (llhttp also takes RTSP/, ICE/, HTTP/2.0, HTTP/0.9 and leading
#: blank lines).
HTTP1: Final = b"HTTP/1."


class StopParsing(Exception):
    """Raised in a parser callback to stop llhttp (what happened is on the ``Response``)."""


def frame_head(
    resp: Response, status: int, keep_alive: bool, fields: list[tuple[bytes, bytes]]
) -> None:
    """Take a parsed head into ``resp``: its status, headers and how its body is framed.

    An interim answer (1xx) is skipped. Wakes the reader once the final head is in.

    Raises:
        StopParsing: llhttp must stop: the answer failed, or it has no body to parse.
    """
    if status < 200:
        if status < 100 or status == 101:
            # 101 switches protocols, which we never ask for.
            resp.fail(AnswerBroken(f"answer status {status}"))
            raise StopParsing
        resp._quiet = 0  # an interim answer (100 Continue, 103 Early Hints): skipped
        return
    _check_head(resp, status, fields)
    resp._quiet = 0
    # One pass each, in C where it can be: the hot path of every answer.
    names = resp._names = [name.lower() for name, _ in fields]
    try:
        # llhttp took only token characters in names; it keeps whitespace after values.
        resp.headers = [(name.decode(), value.rstrip(b" \t").decode()) for name, value in fields]
    except UnicodeDecodeError:
        resp.headers = [(name.decode(), _text(value)) for name, value in fields]
    if b"content-length" in names:
        # llhttp took only ASCII digits, and refused a second Content-Length.
        resp.content_length = int(fields[names.index(b"content-length")][1])
    if b"keep-alive" in names:
        resp._keep_s = keep_alive_s(fields[names.index(b"keep-alive")][1])
    resp.status = status
    resp.keep_alive = keep_alive
    resp.has_head = True
    if resp._no_body or status == 204 or status == 304:
        if resp.content_length is None:
            resp.content_length = 0
        resp._state = DONE
        resp._wake()
        if resp._no_body:
            raise StopParsing  # llhttp would wait for the body the head announces
        return
    _frame_body(resp, names, fields)
    resp._state = BODY
    resp._wake()


def _check_head(resp: Response, status: int, fields: list[tuple[bytes, bytes]]) -> None:
    """Fail a final answer's head with a status past 599, too many lines or too many bytes.

    Raises:
        StopParsing: the head failed.
    """
    if status > 599:
        resp.fail(AnswerBroken(f"answer status {status}"))
        raise StopParsing
    if len(fields) > MAX_HEADERS:
        resp.fail(AnswerBroken(f"more than {MAX_HEADERS} header lines"))
        raise StopParsing
    if resp._quiet > MAX_HEAD and sum(len(n) + len(v) + 4 for n, v in fields) > MAX_HEAD:
        resp.fail(AnswerBroken(f"answer head over {MAX_HEAD} bytes"))
        raise StopParsing


def _frame_body(resp: Response, names: list[bytes], fields: list[tuple[bytes, bytes]]) -> None:
    """Where the body ends: chunked, ``Content-Length`` (llhttp's), else at the close.

    Raises:
        StopParsing: a ``Transfer-Encoding`` other than ``chunked``.
    """
    if b"transfer-encoding" in names:
        # RFC 9112 reads to close after another final coding; a proxy would pass on a
        # body still encoded, or misjudge where it ends: refuse anything else.
        te = b",".join([v for i, (_, v) in enumerate(fields) if names[i] == b"transfer-encoding"])
        if te.strip().lower() != b"chunked":
            resp.fail(AnswerBroken(f"Transfer-Encoding {te.decode('latin-1')!r}"))
            raise StopParsing
    elif resp.content_length is None:
        resp._to_eof = True  # llhttp reads it to the close, and keeps nothing alive


def _text(value: bytes) -> str:
    """A header value as text: UTF-8 where it is (aiohttp writes it back as UTF-8, so it
    goes on unchanged), else Latin-1."""
    value = value.rstrip(b" \t")
    try:
        return value.decode()
    except UnicodeDecodeError:
        return value.decode("latin-1")


def keep_alive_s(value: bytes) -> float | None:
    """How long a connection may stay idle after ``Keep-Alive: timeout=N``: a second less
    than N (half of it when N is 1), so that we never race the upstream's own close."""
    for param in value.split(b","):
        key, _, number = param.partition(b"=")
        if key.strip().lower() == b"timeout":
            number = number.strip()
            if number.isdigit():
                n = int(number)
                return max(n - 1.0, n / 2)
    return None
