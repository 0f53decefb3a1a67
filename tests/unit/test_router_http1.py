"""The router's HTTP/1.1 answer parsing (llhttp), fed bytes in every possible split."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpufleet.router import http1
from gpufleet.router.http1 import AnswerBroken, Lost, Response

from ._http1 import Link, answer


class Boom(Exception):
    """What a watchdog hands to ``Response.fail``."""


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(data[last:p])
        last = p
    pieces.append(data[last:])
    return [p for p in pieces if p]


async def _broken(resp: Response) -> str:
    """The message of the AnswerBroken that the head wait or the body read raises."""

    async def whole() -> bytes:
        await resp.wait_head()
        return await resp.read()

    with pytest.raises(AnswerBroken) as info:
        await whole()
    return str(info.value)


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
            resp, link = await answer(*_split(raw, cuts))
            await resp.wait_head()
            assert resp.status == status
            assert await resp.read() == body
            assert resp.is_done
            assert resp.received == len(raw)
            assert resp.keep_alive
            assert link.kept

    asyncio.run(run())


async def test_headers_keep_order_repeats_and_case() -> None:
    resp, _ = await answer(LENGTH)
    await resp.wait_head()
    assert resp.has_head
    assert resp.headers == [("Content-Length", "11"), ("X-A", "1"), ("X-A", "2")]
    assert resp.header("x-a") == "1"
    assert resp.header_values("x-a") == ["1", "2"]
    assert resp.header_values("x-b") == []
    assert resp.header("content-length") == "11"
    assert resp.content_length == 11


async def test_trailing_whitespace_is_not_part_of_a_value_and_trailers_are_not_headers() -> None:
    resp, _ = await answer(
        b"HTTP/1.1 200 OK\r\nX-A:  a b \t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nok\r\n0\r\nX-T: t\r\n\r\n"
    )
    await resp.wait_head()
    assert await resp.read() == b"ok"
    assert resp.headers == [("X-A", "a b"), ("Transfer-Encoding", "chunked")]


async def test_chunks_reach_the_reader_as_they_arrive() -> None:
    resp, link = await answer(CHUNKED[: CHUNKED.index(b"5\r\n")])
    await resp.wait_head()
    got: list[bytes] = []

    async def reader() -> None:
        async for chunk in resp.iter_chunks():
            got.append(chunk)

    task = asyncio.create_task(reader())
    await asyncio.sleep(0)
    link.feed(b"5\r\nhello\r\n")
    await asyncio.sleep(0)
    assert got == [b"hello"]
    link.feed(b"0\r\n\r\n")
    await task
    assert got == [b"hello"]


async def test_the_head_wait_returns_when_the_head_comes() -> None:
    link = Link()
    resp = await link.send()
    waiting = asyncio.create_task(resp.wait_head())
    await asyncio.sleep(0)
    assert not waiting.done()
    link.feed(b"HTTP/1.1 200 OK\r\n")
    await asyncio.sleep(0)
    assert not waiting.done()
    assert resp.received == 17
    assert not resp.has_head
    link.feed(b"Content-Length: 2\r\n\r\n")
    await waiting
    assert resp.has_head
    assert not resp.is_done
    link.feed(b"ok")
    assert await resp.read() == b"ok"


async def test_interim_answers_are_skipped() -> None:
    resp, _ = await answer(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    )
    await resp.wait_head()
    assert resp.status == 200
    assert await resp.read() == b"ok"


async def test_no_body_for_head_204_and_304() -> None:
    resp, link = await answer(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n", no_body=True)
    await resp.wait_head()
    assert resp.is_done
    assert resp.content_length == 99
    assert await resp.read() == b""
    assert link.kept
    # The connection parses the next answer (a HEAD stops llhttp at the head).
    resp = await link.send()
    link.feed(LENGTH)
    await resp.wait_head()
    assert (resp.status, await resp.read()) == (201, b"hello world")
    assert link.kept
    for status in (204, 304):
        resp, link = await answer(f"HTTP/1.1 {status} X\r\nContent-Length: 5\r\n\r\n".encode())
        await resp.wait_head()
        assert resp.is_done
        assert await resp.read() == b""
        assert link.kept


async def test_bytes_after_a_head_answer_make_the_connection_untrusted() -> None:
    resp, link = await answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", no_body=True)
    await resp.wait_head()
    assert resp.is_done
    assert not resp.keep_alive
    assert not link.kept


async def test_body_to_close_and_connection_close() -> None:
    resp, link = await answer(b"HTTP/1.1 200 OK\r\n\r\npart one ", b"part two")
    await resp.wait_head()
    assert not resp.is_done
    assert not resp.keep_alive
    assert resp.content_length is None
    link.conn.connection_lost(None)
    assert await resp.read() == b"part one part two"
    resp, link = await answer(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
    await resp.wait_head()
    assert resp.is_done
    assert not resp.keep_alive
    assert not link.kept
    resp, link = await answer(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
    await resp.wait_head()
    assert not resp.keep_alive
    resp, link = await answer(
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"
    )
    await resp.wait_head()
    assert resp.keep_alive
    assert link.kept


@pytest.mark.parametrize(
    "extra",
    [b"EXTRA", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"],
    ids=["garbage", "a second answer"],
)
async def test_extra_bytes_make_the_connection_untrusted(extra: bytes) -> None:
    resp, link = await answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" + extra)
    await resp.wait_head()
    assert resp.is_done
    assert not resp.keep_alive
    assert await resp.read() == b"ok"
    assert not link.kept
    assert link.conn.closed


async def test_bytes_while_no_request_is_out_abort_the_connection() -> None:
    resp, link = await answer(LENGTH)
    assert await resp.read() == b"hello world"
    assert link.kept
    link.feed(b"HTTP/1.1 200 OK\r\n")
    assert link.transport.aborted
    assert link.pool._take_idle() is None


async def test_closed_before_any_byte_is_lost_after_is_broken() -> None:
    resp, link = await answer()
    link.conn.connection_lost(ConnectionResetError())
    with pytest.raises(Lost) as info:
        await resp.wait_head()
    assert info.value.reused  # the Link's connection was kept before this request
    resp, link = await answer(b"HTTP/1.1 200 O")
    link.conn.connection_lost(None)
    with pytest.raises(AnswerBroken):
        await resp.wait_head()
    resp, link = await answer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    await resp.wait_head()
    link.conn.connection_lost(None)
    with pytest.raises(AnswerBroken):
        await resp.read()


async def test_fail_ends_the_head_wait_and_closes_the_connection() -> None:
    link = Link()
    resp = await link.send()
    waiting = asyncio.create_task(resp.wait_head())
    await asyncio.sleep(0)
    resp.fail(Boom("first byte"))
    resp.fail(Boom("again"))  # idempotent: the first one stays
    with pytest.raises(Boom, match="first byte"):
        await waiting
    assert link.transport.aborted
    await asyncio.sleep(0)  # connection_lost comes: the error stays ours
    with pytest.raises(Boom, match="first byte"):
        await resp.read()


async def test_fail_ends_a_body_read() -> None:
    resp, link = await answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n")
    await resp.wait_head()
    chunks = resp.iter_chunks()
    assert await anext(chunks) == b"ok"
    pending = asyncio.create_task(resp.read())
    await asyncio.sleep(0)
    assert resp.received > 0
    resp.fail(Boom("idle"))
    with pytest.raises(Boom, match="idle"):
        await pending
    assert link.transport.aborted


async def test_fail_does_nothing_once_the_answer_is_complete() -> None:
    resp, link = await answer(LENGTH)
    await resp.wait_head()
    resp.fail(Boom("late"))
    assert await resp.read() == b"hello world"
    assert link.kept
    assert not link.transport.aborted


async def test_a_cancelled_head_wait_closes_the_connection() -> None:
    link = Link()
    resp = await link.send()
    waiting = asyncio.create_task(resp.wait_head())
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert link.transport.aborted


@pytest.mark.parametrize(
    "raw",
    [
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/0.9 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"RTSP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
        b"HTTP/1.1 200 OK\r\nX: a\r\n folded\r\nContent-Length: 0\r\n\r\n",
    ],
)
async def test_garbage_heads_break_and_abort(raw: bytes) -> None:
    resp, link = await answer(raw)
    await _broken(resp)
    assert link.transport.aborted


async def test_bad_chunk_and_oversized_head() -> None:
    resp, link = await answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
    await resp.wait_head()
    with pytest.raises(AnswerBroken):
        await resp.read()
    assert link.transport.aborted
    resp, link = await answer(b"HTTP/1.1 200 OK\r\nX: " + b"a" * (http1.MAX_HEAD + 1))
    assert "answer head over" in await _broken(resp)


async def test_endless_trailers_are_cut() -> None:
    resp, link = await answer(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-T: ",
        *[b"t" * 16384] * 5,
    )
    await resp.wait_head()
    with pytest.raises(AnswerBroken, match="trailers"):
        await resp.read()
    assert link.transport.aborted


async def test_a_slow_reader_pauses_the_socket_and_resumes_it() -> None:
    resp, link = await answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    await resp.wait_head()
    piece = b"x" * 65536
    link.feed(*[b"10000\r\n" + piece + b"\r\n"] * 5)
    assert link.transport.paused >= 1
    chunks = resp.iter_chunks()
    assert len(await anext(chunks)) == 5 * 65536
    assert link.transport.resumed == 0
    rest = asyncio.create_task(anext(chunks, b"end"))
    await asyncio.sleep(0)
    assert link.transport.resumed == 1  # the reader drained the buffer and wants more
    link.feed(b"0\r\n\r\n")
    assert await rest == b"end"


@pytest.mark.parametrize(
    "value", [b"-1", b"+5", b"0x10", b"1_0", b" 5 5", b"\xd9\xa3", b"", b"5.0", b"1e3"]
)
async def test_content_length_must_be_ascii_digits(value: bytes) -> None:
    resp, link = await answer(b"HTTP/1.1 200 OK\r\nContent-Length: " + value + b"\r\n\r\nhello")
    await _broken(resp)
    assert link.transport.aborted


@pytest.mark.parametrize("size", [b"-5", b"+5", b"0x5", b"5_0", b"", b"5 5", b"\xd9\xa3", b"g"])
async def test_chunk_size_must_be_hex_digits(size: bytes) -> None:
    resp, link = await answer(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + size + b"\r\nhello\r\n"
    )
    await _broken(resp)
    assert link.transport.aborted


@settings(max_examples=80, deadline=None)
@given(value=st.binary(min_size=1, max_size=12))
def test_only_plain_numbers_are_lengths_and_sizes(value: bytes) -> None:
    """Whatever the bytes, a length or chunk size is taken only when it is plain digits."""
    value = value.replace(b"\r", b"").replace(b"\n", b"").replace(b";", b"")

    async def run() -> None:
        resp, _ = await answer(b"HTTP/1.1 200 OK\r\nContent-Length: " + value + b"\r\n\r\n")
        stripped = value.strip(b" \t")
        if stripped and all(48 <= c <= 57 for c in stripped):
            await resp.wait_head()
            assert resp.content_length == int(stripped)
        else:
            await _broken(resp)
        resp, _ = await answer(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + value + b"\r\n"
        )
        await resp.wait_head()
        if value and all(c in b"0123456789abcdefABCDEF" for c in value):
            assert resp._exc is None
        else:
            assert isinstance(resp._exc, AnswerBroken)

    asyncio.run(run())


async def test_a_read_to_close_body_reset_mid_body_is_broken() -> None:
    resp, link = await answer(b"HTTP/1.1 200 OK\r\n\r\npart one ")
    await resp.wait_head()
    link.conn.connection_lost(ConnectionResetError("reset by peer"))
    assert not resp.is_done
    with pytest.raises(AnswerBroken):
        async for _ in resp.iter_chunks():
            pass
    # A clean close (no error) is still the body's end.
    resp, link = await answer(b"HTTP/1.1 200 OK\r\n\r\nall of it")
    link.conn.connection_lost(None)
    assert resp.is_done
    assert await resp.read() == b"all of it"


async def test_a_head_over_the_limit_is_refused_even_when_it_arrives_whole() -> None:
    # The blank line arrives in the same read as the rest: the size is still checked.
    # The header lines ("name: value" and CRLF each) may make up MAX_HEAD bytes, no more.
    def head(lines_size: int) -> bytes:
        fill = lines_size - len(b"Content-Length: 0\r\n") - len(b"X: \r\n")
        return b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX: " + b"a" * fill + b"\r\n\r\n"

    resp, link = await answer(head(http1.MAX_HEAD + 1))
    assert "answer head over" in await _broken(resp)
    assert link.transport.aborted
    resp, _ = await answer(head(http1.MAX_HEAD))
    await resp.wait_head()
    assert resp.status == 200


async def test_the_number_of_header_lines_is_capped() -> None:
    def head(n: int) -> bytes:
        return b"HTTP/1.1 200 OK\r\n" + b"X-H: v\r\n" * (n - 1) + b"Content-Length: 0\r\n\r\n"

    resp, _ = await answer(head(http1.MAX_HEADERS))
    await resp.wait_head()
    assert len(resp.headers) == http1.MAX_HEADERS
    resp, link = await answer(head(http1.MAX_HEADERS + 1))
    assert "header lines" in await _broken(resp)
    assert link.transport.aborted


async def test_many_interim_answers_in_one_read_are_skipped_without_recursion() -> None:
    resp, _ = await answer(b"HTTP/1.1 100 Continue\r\n\r\n" * 5000 + LENGTH)
    await resp.wait_head()
    assert resp.status == 201
    assert await resp.read() == b"hello world"
    # The same, arriving a few bytes at a time.
    raw = b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" * 3 + LENGTH
    resp, _ = await answer(*[raw[i : i + 7] for i in range(0, len(raw), 7)])
    await resp.wait_head()
    assert resp.status == 201
    assert resp.headers[0] == ("Content-Length", "11")
    assert await resp.read() == b"hello world"


@pytest.mark.parametrize(
    ("value", "kept_s"),
    [(b"timeout=5", 4.0), (b"timeout=1, max=100", 0.5), (b"max=5, timeout=60", 4.0)],
)
async def test_keep_alive_timeout_shortens_the_idle_time(value: bytes, kept_s: float) -> None:
    now = [100.0]
    link = Link()
    link.pool._clock = lambda: now[0]
    resp = await link.send()
    link.feed(b"HTTP/1.1 200 OK\r\nKeep-Alive: " + value + b"\r\nContent-Length: 0\r\n\r\n")
    await resp.wait_head()
    assert link.kept
    assert link.conn.expires == 100.0 + kept_s  # never past the pool's own 4 s
    now[0] += kept_s
    assert link.pool.sweep() == 1


async def test_keep_alive_timeout_0_closes_the_connection() -> None:
    resp, link = await answer(
        b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=0\r\nContent-Length: 0\r\n\r\n"
    )
    await resp.wait_head()
    assert resp.is_done
    assert not link.kept
    assert link.conn.closed


async def test_a_kept_connection_closing_before_the_write_is_not_sent() -> None:
    link = Link()
    link.transport.closing = True  # closed by the upstream; connection_lost not yet run
    with pytest.raises(http1.NotSent):
        await link.pool.send(b"GET / HTTP/1.1\r\n\r\n", None, no_body=False)
    assert link.transport.written == []
