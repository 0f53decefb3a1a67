"""``gpufleet bench`` on a terminal shows a live line while it runs (issue 14)."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys

from gpufleet.testing import run_worker


def test_bench_on_a_terminal_shows_a_live_line() -> None:
    with run_worker("synthetic", "--model-arg", "base_ms=10") as worker:
        master, slave = pty.openpty()  # stderr is a terminal, as when a user runs it
        try:
            done = subprocess.run(
                # host:port, as users type it: http:// is understood
                [
                    sys.executable,
                    "-m",
                    "gpufleet",
                    "bench",
                    worker.url.removeprefix("http://"),
                    "--requests",
                    "300",
                ],
                stdout=subprocess.PIPE,
                stderr=slave,
                timeout=60,
                check=False,
            )
            os.close(slave)
            seen = b""
            while True:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the other end is closed: all read
                    break
                if not chunk:
                    break
                seen += chunk
        finally:
            os.close(master)
    assert done.returncode == 0
    text = seen.decode()
    lines = re.findall(
        r"\rbench: sent (\d+)  ok (\d+)  errors (\d+)  [\d.]+ req/s  [\d.]+s elapsed  ETA", text
    )
    assert lines, text
    assert all(int(ok) + int(errors) <= int(sent) for sent, ok, errors in lines)
    assert text.rstrip().endswith("\r\x1b[K")  # the line gives way to the results
    assert b"bench: sent" not in done.stdout  # never in the results on stdout
