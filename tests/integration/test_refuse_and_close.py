"""A refused body is not read (issue 13): 413 with ``Connection: close``, the socket closed.

A raw socket announces a 20 GB body (or streams a chunked one past the limit) and keeps
sending; the router and the worker answer 413 at once and close, and spend almost no CPU
on it (they used to read and discard the body for 10 s, at 90% of a core).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from gpufleet.testing import ServerProcess, run_router, run_worker
from gpufleet.testing.upstreams import run_upstream

_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


@contextlib.contextmanager
def _server(kind: str) -> Iterator[ServerProcess]:
    if kind == "worker":
        with run_worker("synthetic", "--max-body-mb", "1") as worker:
            yield worker
    else:
        with run_upstream() as upstream, run_router([upstream.url], "--max-body-mb", "1") as r:
            yield r


def _head(framing: str) -> bytes:
    length = (
        b"Content-Length: 20000000000\r\n"
        if framing == "length"
        else b"Transfer-Encoding: chunked\r\n"
    )
    return (
        b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + length
        + b"\r\n"
    )


@pytest.mark.parametrize("framing", ["length", "chunked"])
@pytest.mark.parametrize("kind", ["router", "worker"])
def test_an_endless_upload_gets_413_and_the_socket_closes(kind: str, framing: str) -> None:
    piece = b"x" * 65536
    if framing == "chunked":
        piece = b"%x\r\n" % len(piece) + piece + b"\r\n"
    with _server(kind) as server:
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.settimeout(10)
        sent = [0]
        stop = threading.Event()

        def upload() -> None:
            with contextlib.suppress(OSError):
                sock.sendall(_head(framing))
                while not stop.is_set():
                    sock.sendall(piece)
                    sent[0] += len(piece)

        cpu_before = _cpu_s(server.pid)
        started = time.monotonic()
        sender = threading.Thread(target=upload)
        sender.start()
        answer = b""
        try:
            with contextlib.suppress(ConnectionResetError):
                while chunk := sock.recv(65536):
                    answer += chunk
            closed_after = time.monotonic() - started
        finally:
            stop.set()
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sender.join(10)
            sock.close()
        cpu = _cpu_s(server.pid) - cpu_before
        print(
            f"{kind} {framing}: closed after {closed_after:.3f}s, {sent[0] / 1e6:.1f} MB "
            f"sent, server CPU {cpu:.2f}s"
        )
        assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
        assert b"Connection: close" in answer or b"connection: close" in answer.lower()
        assert b"PayloadTooLarge" in answer
        assert closed_after < 3.0
        assert sent[0] < 64e6  # what the socket buffers and the bounded read took
        assert cpu < 1.0
        assert "Traceback" not in server.log()
