"""The router's HTTP/1.1 answer parser, fed bytes in every possible split."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpufleet.router import http1
from gpufleet.router.http1 import AnswerBroken, NotSent, Response


class FakeConn:
    """Records what the answer asks of its connection."""

    def __init__(self) -> None:
        self.done_with: Response | None = None
        self.aborted = False
        self.paused = 0
        self.resumed = 0

    def done(self, response: Response) -> None:
        self.done_with = response

    def abort(self) -> None:
        self.aborted = True

    def pause(self) -> None:
        self.paused += 1

    def resume(self) -> None:
        self.resumed += 1


def _response(no_body: bool = False) -> tuple[Response, FakeConn, asyncio.Future[None]]:
    conn = FakeConn()
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    return Response(conn, fut, no_body), conn, fut  # type: ignore[arg-type]


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(data[last:p])
        last = p
    pieces.append(data[last:])
    return [p for p in pieces if p]


CHUNKED = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n1;ext=1\r\n \r\n6\r\nworld!\r\n0\r\nX-Trailer: t\r\n\r\n"
)
LENGTH = b"HTTP/1.1 201 Created\r\nContent-Length: 11\r\nX-A: 1\r\nX-A: 2\r\n\r\nhello world"


@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8))
def test_any_split_gives_the_same_answer(cuts: list[int]) -> None:
    async def run() -> None:
        for raw, status, body in ((CHUNKED, 200, b"hello world!"), (LENGTH, 201, b"hello world")):
            resp, conn, fut = _response()
            for piece in _split(raw, cuts):
                resp.feed(piece)
            assert fut.done()
            assert resp.status == status
            assert await resp.read() == body
            assert resp.is_done
            assert conn.done_with is resp
            assert resp.keep_alive
            assert not conn.aborted

    asyncio.run(run())


async def test_headers_keep_order_repeats_and_case() -> None:
    resp, _, _ = _response()
    resp.feed(LENGTH)
    assert resp.headers == [("Content-Length", "11"), ("X-A", "1"), ("X-A", "2")]
    assert resp.header("x-a") == "1"
    assert resp.content_length == 11


async def test_chunks_reach_the_reader_as_they_arrive() -> None:
    resp, _, _ = _response()
    resp.feed(CHUNKED[: CHUNKED.index(b"5\r\n")])
    got: list[bytes] = []

    async def reader() -> None:
        async for chunk in resp.iter_chunks():
            got.append(chunk)

    task = asyncio.create_task(reader())
    await asyncio.sleep(0)
    resp.feed(b"5\r\nhello\r\n")
    await asyncio.sleep(0)
    assert got == [b"hello"]
    resp.feed(b"0\r\n\r\n")
    await task
    assert got == [b"hello"]


async def test_interim_answers_are_skipped() -> None:
    resp, _, _ = _response()
    resp.feed(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert resp.status == 200
    assert await resp.read() == b"ok"


async def test_no_body_for_head_204_and_304() -> None:
    resp, conn, _ = _response(no_body=True)
    resp.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n")
    assert resp.is_done
    assert conn.done_with is resp
    assert await resp.read() == b""
    for status in (204, 304):
        resp, conn, _ = _response()
        resp.feed(f"HTTP/1.1 {status} X\r\n\r\n".encode())
        assert resp.is_done
        assert conn.done_with is resp


async def test_body_to_close_and_connection_close() -> None:
    resp, _conn, _ = _response()
    resp.feed(b"HTTP/1.1 200 OK\r\n\r\npart one ")
    resp.feed(b"part two")
    assert not resp.is_done
    assert not resp.keep_alive
    resp.connection_lost(None)
    assert await resp.read() == b"part one part two"
    resp, _, _ = _response()
    resp.feed(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
    assert resp.is_done
    assert not resp.keep_alive
    resp, _, _ = _response()
    resp.feed(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert not resp.keep_alive


async def test_extra_bytes_make_the_connection_untrusted() -> None:
    resp, _, _ = _response()
    resp.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA")
    assert resp.is_done
    assert not resp.keep_alive
    assert await resp.read() == b"ok"


async def test_closed_before_any_byte_is_not_sent_after_is_broken() -> None:
    resp, _, fut = _response()
    resp.connection_lost(ConnectionResetError())
    with pytest.raises(NotSent):
        await fut
    resp, _, fut = _response()
    resp.feed(b"HTTP/1.1 200 O")
    resp.connection_lost(None)
    with pytest.raises(AnswerBroken):
        await fut
    resp, _, fut = _response()
    resp.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    await fut
    resp.connection_lost(None)
    with pytest.raises(AnswerBroken):
        await resp.read()


@pytest.mark.parametrize(
    "raw",
    [
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
    ],
)
async def test_garbage_heads_break_and_abort(raw: bytes) -> None:
    resp, conn, fut = _response()
    resp.feed(raw)
    with pytest.raises(AnswerBroken):
        await fut
    assert conn.aborted


async def test_bad_chunk_and_oversized_head() -> None:
    resp, conn, fut = _response()
    resp.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
    await fut
    with pytest.raises(AnswerBroken):
        await resp.read()
    assert conn.aborted
    resp, conn, fut = _response()
    resp.feed(b"HTTP/1.1 200 OK\r\nX: " + b"a" * (http1.MAX_HEAD + 1))
    with pytest.raises(AnswerBroken):
        await fut


async def test_a_slow_reader_pauses_the_socket_and_resumes_it() -> None:
    resp, conn, _ = _response()
    resp.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    piece = b"x" * 65536
    for _ in range(5):
        resp.feed(b"10000\r\n" + piece + b"\r\n")
    assert conn.paused >= 1
    chunks = resp.iter_chunks()
    assert len(await anext(chunks)) == 5 * 65536
    assert conn.resumed == 0
    rest = asyncio.create_task(anext(chunks, b"end"))
    await asyncio.sleep(0)
    assert conn.resumed == 1  # the reader drained the buffer and wants more
    resp.feed(b"0\r\n\r\n")
    assert await rest == b"end"


@pytest.mark.parametrize(
    "value", [b"-1", b"+5", b"0x10", b"1_0", b" 5 5", b"\xd9\xa3", b"", b"5.0", b"1e3"]
)
async def test_content_length_must_be_ascii_digits(value: bytes) -> None:
    resp, conn, fut = _response()
    resp.feed(b"HTTP/1.1 200 OK\r\nContent-Length: " + value + b"\r\n\r\nhello")
    with pytest.raises(AnswerBroken):
        await fut
    assert conn.aborted


@pytest.mark.parametrize("size", [b"-5", b"+5", b"0x5", b"5_0", b"", b"5 5", b"\xd9\xa3", b"g"])
async def test_chunk_size_must_be_hex_digits(size: bytes) -> None:
    resp, conn, fut = _response()
    resp.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + size + b"\r\nhello\r\n")
    await fut
    with pytest.raises(AnswerBroken):
        await resp.read()
    assert conn.aborted


@settings(max_examples=80, deadline=None)
@given(value=st.binary(min_size=1, max_size=12))
def test_only_plain_numbers_are_lengths_and_sizes(value: bytes) -> None:
    """Whatever the bytes, a length or chunk size is taken only when it is plain digits."""
    value = value.replace(b"\r", b"").replace(b"\n", b"").replace(b";", b"")

    async def run() -> None:
        resp, _, fut = _response()
        resp.feed(b"HTTP/1.1 200 OK\r\nContent-Length: " + value + b"\r\n\r\n")
        stripped = value.strip()
        if stripped and all(48 <= c <= 57 for c in stripped):
            await fut
            assert resp.content_length == int(stripped)
        else:
            with pytest.raises(AnswerBroken):
                await fut
        resp, _, fut = _response()
        resp.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + value + b"\r\n")
        await fut
        hexdigits = b"0123456789abcdefABCDEF"
        if stripped and all(c in hexdigits for c in stripped):
            assert resp._exc is None
        else:
            assert isinstance(resp._exc, AnswerBroken)

    asyncio.run(run())


async def test_a_read_to_close_body_reset_mid_body_is_broken() -> None:
    resp, _, fut = _response()
    resp.feed(b"HTTP/1.1 200 OK\r\n\r\npart one ")
    await fut
    resp.connection_lost(ConnectionResetError("reset by peer"))
    assert not resp.is_done
    with pytest.raises(AnswerBroken):
        async for _ in resp.iter_chunks():
            pass
    # A clean close (no error) is still the body's end.
    resp, _, fut = _response()
    resp.feed(b"HTTP/1.1 200 OK\r\n\r\nall of it")
    resp.connection_lost(None)
    assert resp.is_done
    assert await resp.read() == b"all of it"


async def test_a_head_over_the_limit_is_refused_even_when_it_arrives_whole() -> None:
    # The blank line arrives in the same read as the rest: the size is still checked.
    big = b"HTTP/1.1 200 OK\r\nX: " + b"a" * http1.MAX_HEAD + b"\r\nContent-Length: 0\r\n\r\n"
    resp, conn, fut = _response()
    resp.feed(big)
    with pytest.raises(AnswerBroken):
        await fut
    assert conn.aborted
    # Just under the limit is fine.
    line = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX: "
    ok = line + b"a" * (http1.MAX_HEAD - len(line)) + b"\r\n\r\n"
    resp, conn, fut = _response()
    resp.feed(ok)
    await fut
    assert resp.status == 200


async def test_the_number_of_header_lines_is_capped() -> None:
    def head(n: int) -> bytes:
        return b"HTTP/1.1 200 OK\r\n" + b"X-H: v\r\n" * (n - 1) + b"Content-Length: 0\r\n\r\n"

    resp, _, fut = _response()
    resp.feed(head(http1.MAX_HEADERS))
    await fut
    assert len(resp.headers) == http1.MAX_HEADERS
    resp, conn, fut = _response()
    resp.feed(head(http1.MAX_HEADERS + 1))
    with pytest.raises(AnswerBroken):
        await fut
    assert conn.aborted


async def test_many_interim_answers_in_one_read_are_skipped_without_recursion() -> None:
    resp, _, fut = _response()
    resp.feed(b"HTTP/1.1 100 Continue\r\n\r\n" * 5000 + LENGTH)
    await fut
    assert resp.status == 201
    assert await resp.read() == b"hello world"
    # The same, arriving a few bytes at a time.
    resp, _, fut = _response()
    raw = b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" * 3 + LENGTH
    for i in range(0, len(raw), 7):
        resp.feed(raw[i : i + 7])
    await fut
    assert resp.status == 201
    assert resp.headers[0] == ("Content-Length", "11")
    assert await resp.read() == b"hello world"
