"""A bounded fuzz of a router and the worker behind it (issue 13): random request lines,
headers, framing and JSON shapes. No answer is a 500 (our own code failing), nothing
hangs, nothing logs a traceback, and the worker is still ready afterwards.

A few hundred cases by default; ``GPUFLEET_FUZZ_EXAMPLES=5000`` runs more.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpufleet.testing import ServerProcess, run_router, run_worker
from gpufleet.testing._process import http_status

EXAMPLES = int(os.environ.get("GPUFLEET_FUZZ_EXAMPLES", "300"))
#: Longest a case may take: the router's --timeout (an incomplete body waits for it).
_CASE_S = 8.0


@pytest.fixture(scope="module")
def fleet() -> Iterator[tuple[ServerProcess, ServerProcess]]:
    with (
        run_worker("synthetic", "--model-arg", "base_ms=1", "--max-body-mb", "1") as worker,
        run_router([worker.url], "--timeout", "3", "--max-body-mb", "1") as router,
    ):
        yield router, worker


_TOKEN = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=":"),
    min_size=1,
    max_size=20,
)
_VALUE = st.binary(max_size=60).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)
_PATHS = [
    "/predict",
    "/v1/embeddings",
    "/v1/chat/completions",
    "/v1/completions",
    "/health",
    "/stats",
    "/metrics",
    "/dashboard/stats",
    "/admin/workers",
    "/admin/workers/w0/drain",
    "/echo",
]


@st.composite
def _bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["input", "inputs", "any", "deep", "bytes", "empty"]))
    if kind == "input":
        return json.dumps({"input": draw(_JSON)}).encode()
    if kind == "inputs":
        return json.dumps({"inputs": draw(st.lists(_JSON, max_size=5))}).encode()
    if kind == "any":
        return json.dumps(draw(_JSON)).encode()
    if kind == "deep":
        depth = draw(st.integers(100, 50_000))
        return b'{"input": ' + b"[" * depth + b"]" * draw(st.sampled_from([0, depth])) + b"}"
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    return b""


@st.composite
def _requests(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH"]) | _TOKEN)
    path = draw(st.sampled_from(_PATHS))
    path += draw(st.sampled_from(["", "?x=1", "/../admin", "%00", "//x", "?" + "a" * 300]))
    version = draw(st.sampled_from([b"HTTP/1.1"] * 8 + [b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1"]))
    host = draw(st.sampled_from([b"127.0.0.1"] * 6 + [b"localhost:1", b"evil.example", b""]))
    lines = [method.encode("utf-8", "replace") + b" " + path.encode() + b" " + version]
    lines.append(b"Host: " + host)
    for name, value in draw(st.lists(st.tuples(_TOKEN, _VALUE), max_size=6)):
        lines.append(name.encode() + b": " + value)
    body = draw(_bodies())
    framing = draw(st.sampled_from(["length", "chunked", "bad-chunked", "none", "short", "te"]))
    if framing == "length":
        lines.append(b"Content-Length: %d" % len(body))
    elif framing == "short":
        lines.append(b"Content-Length: %d" % (len(body) // 2))
    elif framing in ("chunked", "bad-chunked", "te"):
        lines.append(b"Transfer-Encoding: " + (b"gzip, chunked" if framing == "te" else b"chunked"))
        if framing == "bad-chunked":
            body = draw(st.sampled_from([b"zz", b"-1", b"0x10", b"1_0", b"fffffffffffffffff"])) + (
                b"\r\n" + body + b"\r\n0\r\n\r\n"
            )
        else:
            body = (b"%x\r\n" % len(body) + body + b"\r\n" if body else b"") + b"0\r\n\r\n"
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _exchange(port: int, data: bytes) -> tuple[bytes, float]:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=_CASE_S) as sock:
        got = b""
        try:
            sock.sendall(data)
            while chunk := sock.recv(65536):
                got += chunk
        except ConnectionResetError:
            pass
    return got, time.monotonic() - started


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=_requests(), to_worker=st.booleans())
def test_random_requests_never_break_router_or_worker(
    fleet: tuple[ServerProcess, ServerProcess], data: bytes, to_worker: bool
) -> None:
    router, worker = fleet
    answer, took = _exchange((worker if to_worker else router).port, data)
    assert took < _CASE_S, (took, data[:300])
    status = answer[9:12]
    assert status != b"500", (data[:300], answer[:500])


def test_after_the_fuzz_everything_is_ready_and_no_traceback(
    fleet: tuple[ServerProcess, ServerProcess],
) -> None:
    router, worker = fleet
    assert http_status(router.url + "/health") == 200
    stats: dict[str, Any] = json.loads(
        _exchange(router.port, _GET_STATS)[0].split(b"\r\n\r\n", 1)[1]
    )
    assert [w["state"] for w in stats["workers"]] == ["ready"]
    for proc in (router, worker):
        log = proc.log()
        for bad in ("Traceback", "Error handling request", "Unhandled exception"):
            assert bad not in log, log[-3000:]


_GET_STATS = b"GET /stats HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
