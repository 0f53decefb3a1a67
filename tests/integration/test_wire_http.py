"""``wire.http.PeerClient`` against a real aiohttp server on 127.0.0.1 port 0.

Budget, redirects, answer size, Bearer token and the mapping of every failure into
``RequestFailed`` (never an aiohttp or socket exception).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import aiohttp
import msgspec
import pytest
from aiohttp import web

from gpufleet.errors import ClientClosed, RequestFailed
from gpufleet.wire.http import PeerClient

#: Guards each test: a budget the client failed to keep fails here, not at pytest's timeout.
_GUARD_S = 10.0


class _Stats(msgspec.Struct):
    server: str
    served: int


async def _stall(request: web.Request) -> web.StreamResponse:
    await asyncio.Event().wait()  # never answers; the client's budget must end the call
    raise AssertionError("unreachable")


async def _stall_body(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    await resp.prepare(request)
    await resp.write(b'{"server": ')  # headers and half a body, then nothing
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


async def _big(request: web.Request) -> web.StreamResponse:
    size = int(request.query.get("size", "2048"))
    if request.query.get("chunked"):  # no Content-Length: the bound must hold while reading
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for _ in range(size // 256):
            await resp.write(b"x" * 256)
        await resp.write_eof()
        return resp
    return web.Response(body=b"x" * size)


async def _overloaded(request: web.Request) -> web.Response:
    body = {"error": "WorkerOverloaded", "message": "queue full (64)", "retry_after_s": 2.0}
    return web.json_response(body, status=503, headers={"Retry-After": "2"})


async def _missing(request: web.Request) -> web.Response:
    return web.json_response({"error": "NotFound", "message": "no such worker"}, status=404)


async def _openai_error(request: web.Request) -> web.Response:
    body = {"error": {"message": "no model x", "type": "invalid_request_error", "code": "m"}}
    return web.json_response(body, status=404)


async def _redirect(request: web.Request) -> web.Response:
    raise web.HTTPFound("/stats")


async def _stats(request: web.Request) -> web.Response:
    return web.json_response({"server": "gpufleet-worker", "served": 3, "extra": [1]})


async def _whoami(request: web.Request) -> web.Response:
    return web.json_response({"authorization": request.headers.get("Authorization")})


async def _echo(request: web.Request) -> web.Response:
    """What was sent: its Content-Type, and the form's fields or the raw body."""
    kind = request.content_type
    if kind == "multipart/form-data":
        form = await request.post()
        fields = {
            k: v.file.read().decode() if isinstance(v, web.FileField) else str(v)
            for k, v in form.items()
        }
        return web.json_response({"type": kind, "fields": fields})
    return web.json_response({"type": kind, "body": (await request.read()).decode()})


async def _not_json(request: web.Request) -> web.Response:
    return web.Response(text="<html>hello</html>", content_type="text/html")


async def _deep(request: web.Request) -> web.Response:
    return web.Response(body=b"[" * 5000 + b"]" * 5000, content_type="application/json")


@pytest.fixture
async def server() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/stall", _stall)
    app.router.add_get("/stall-body", _stall_body)
    app.router.add_get("/big", _big)
    app.router.add_get("/overloaded", _overloaded)
    app.router.add_get("/missing", _missing)
    app.router.add_get("/openai-error", _openai_error)
    app.router.add_get("/redirect", _redirect)
    app.router.add_get("/stats", _stats)
    app.router.add_post("/whoami", _whoami)
    app.router.add_post("/echo", _echo)
    app.router.add_get("/not-json", _not_json)
    app.router.add_get("/deep", _deep)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[PeerClient]:
    async with PeerClient(timeout_s=5.0) as client:
        yield client


async def test_decodes_into_the_named_type(server: str, http: PeerClient) -> None:
    stats = await http.get(server + "/stats", into=_Stats)
    assert stats == _Stats(server="gpufleet-worker", served=3)  # unknown fields ignored
    assert await http.get(server + "/stats") == {
        "server": "gpufleet-worker",
        "served": 3,
        "extra": [1],
    }


async def test_a_raw_or_multipart_body_is_sent_as_it_is(server: str, http: PeerClient) -> None:
    sent = await http.call("POST", server + "/echo", data=b"a line\n")
    assert sent == {"type": "application/octet-stream", "body": "a line\n"}
    form = aiohttp.FormData()
    form.add_field("purpose", "batch")
    form.add_field("file", b'{"x": 1}\n', filename="in.jsonl", content_type="application/jsonl")
    sent = await http.call("POST", server + "/echo", data=form)
    assert sent == {
        "type": "multipart/form-data",
        "fields": {"purpose": "batch", "file": '{"x": 1}\n'},
    }
    assert await http.call("POST", server + "/echo", json={"a": 1}) == {
        "type": "application/json",
        "body": '{"a":1}',
    }
    with pytest.raises(ValueError, match="not both"):
        await http.request("POST", server + "/echo", json={"a": 1}, data=b"x")


async def test_budget_covers_the_wait_for_headers(server: str, http: PeerClient) -> None:
    async with asyncio.timeout(_GUARD_S):
        with pytest.raises(RequestFailed) as info:
            await http.get(server + "/stall", timeout_s=0.2)
    assert info.value.status is None
    assert info.value.retryable
    assert "no answer within 0.2s" in info.value.message


async def test_budget_covers_the_body(server: str, http: PeerClient) -> None:
    async with asyncio.timeout(_GUARD_S):
        with pytest.raises(RequestFailed, match="no answer within"):
            await http.request("GET", server + "/stall-body", timeout_s=0.2)


async def test_redirects_are_not_followed_by_default(server: str, http: PeerClient) -> None:
    answer = await http.request("GET", server + "/redirect")
    assert answer.status == 302
    assert answer.headers["location"] == "/stats"  # case-insensitive
    with pytest.raises(RequestFailed) as info:
        await http.get(server + "/redirect")
    assert info.value.status == 302
    assert not info.value.retryable
    assert "redirects are not followed" in info.value.message
    followed = await http.request("GET", server + "/redirect", follow_redirects=True)
    assert followed.status == 200
    assert followed.json()["served"] == 3


@pytest.mark.parametrize("chunked", [False, True])
async def test_answers_over_the_bound_fail(server: str, http: PeerClient, chunked: bool) -> None:
    url = server + "/big?size=4096" + ("&chunked=1" if chunked else "")
    assert len((await http.request("GET", url, max_bytes=4096)).body) == 4096
    with pytest.raises(RequestFailed, match="over 1024 bytes") as info:
        await http.request("GET", url, max_bytes=1024)
    assert info.value.status == 200
    small = PeerClient(max_bytes=1000)  # the client's own default bound
    try:
        with pytest.raises(RequestFailed, match="over 1000 bytes"):
            await small.request("GET", url)
    finally:
        await small.aclose()


async def test_error_answers_keep_name_status_and_retry_after(
    server: str, http: PeerClient
) -> None:
    with pytest.raises(RequestFailed) as info:
        await http.get(server + "/overloaded")
    exc = info.value
    assert (exc.status, exc.retryable, exc.retry_after_s) == (503, True, 2.0)
    assert "WorkerOverloaded" in exc.message
    assert "queue full (64)" in exc.message
    with pytest.raises(RequestFailed) as info:
        await http.get(server + "/missing")
    assert (info.value.status, info.value.retryable) == (404, False)
    assert "no such worker" in info.value.message
    with pytest.raises(RequestFailed, match="no model x"):
        await http.get(server + "/openai-error")
    # request() itself answers any status: a probe reads a 503 as an answer.
    answer = await http.request("GET", server + "/overloaded")
    assert answer.status == 503
    assert not answer.is_ok


async def test_nothing_listening_is_a_retryable_request_failed(http: PeerClient) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: the connect is refused
        with pytest.raises(RequestFailed) as info:
            await http.get(f"http://127.0.0.1:{port}/stats")
    assert info.value.status is None
    assert info.value.retryable
    assert type(info.value) is RequestFailed  # no aiohttp type escapes


@pytest.mark.parametrize("url", ["not a url", "ftp://127.0.0.1/x", "http://"])
async def test_unusable_urls_are_request_failed(http: PeerClient, url: str) -> None:
    with pytest.raises(RequestFailed):
        await http.get(url)


async def test_bodies_not_of_the_expected_shape_fail(server: str, http: PeerClient) -> None:
    with pytest.raises(RequestFailed, match="not the JSON expected") as info:
        await http.get(server + "/not-json")
    assert info.value.status == 200
    with pytest.raises(RequestFailed, match="not the JSON expected"):
        await http.get(server + "/deep")
    with pytest.raises(RequestFailed, match="not the JSON expected"):
        await http.get(server + "/deep", into=list[object])

    class Wrong(msgspec.Struct):
        served: str

    with pytest.raises(RequestFailed, match="not the JSON expected"):
        await http.get(server + "/stats", into=Wrong)


async def test_bearer_token_default_and_per_call(server: str) -> None:
    async with PeerClient(token="s3cret") as http:
        seen = await http.call("POST", server + "/whoami", json={})
        assert seen == {"authorization": "Bearer s3cret"}
        seen = await http.call("POST", server + "/whoami", token="other")
        assert seen == {"authorization": "Bearer other"}
    async with PeerClient() as http:
        assert await http.call("POST", server + "/whoami") == {"authorization": None}


async def test_a_closed_client_says_so(server: str) -> None:
    http = PeerClient()
    await http.get(server + "/stats")
    await http.aclose()
    with pytest.raises(ClientClosed):
        await http.get(server + "/stats")


async def test_a_session_passed_in_is_left_open(server: str) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with PeerClient(session=session) as http:
            assert (await http.get(server + "/stats", into=_Stats)).served == 3
        assert not session.closed


def test_budget_must_be_finite_and_positive() -> None:
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="timeout_s"):
            PeerClient(timeout_s=bad)
