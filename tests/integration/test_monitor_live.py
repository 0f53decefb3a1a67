"""``gpufleet monitor URL`` live (no ``--once``): a real process, real polls, Ctrl-C ends it.

Piped (not a terminal), rich's ``Live`` draws nothing while it runs and prints its last
frame once when it stops: that frame is what is checked here.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

from gpufleet.testing import run_router, run_worker
from tests.integration._fleet import get_json, table_row


def post(url: str, body: object) -> None:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        resp.read()


def _sockets_to(port: int) -> set[str]:
    """Inodes of the TCP sockets on this machine connected to 127.0.0.1:``port``."""
    found = set()
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            cols = line.split()
            if cols[2].endswith(f":{port:04X}") and cols[3] == "01":  # ESTABLISHED
                found.add(cols[9])
    return found


def _wait_connected(pid: int, port: int, *, deadline_s: float) -> None:
    """Return once process ``pid`` holds a connection to ``port``; fail at the deadline."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        mine = set()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    mine.add(target[8:-1])
        if mine & _sockets_to(port):
            return
        time.sleep(0.05)
    raise AssertionError(f"the monitor (pid {pid}) never connected to port {port}")


def test_live_monitor_polls_until_ctrl_c_then_exits_130() -> None:
    with (
        run_worker("synthetic", "--model-arg", "base_ms=5") as a,
        run_worker("synthetic", "--model-arg", "base_ms=5") as b,
        run_router([a.url, b.url]) as router,
    ):
        stop = threading.Event()
        sent = 0

        def traffic() -> None:
            nonlocal sent
            while not stop.is_set():
                post(router.url + "/predict", {"input": sent})
                sent += 1

        proc = subprocess.Popen(
            [sys.executable, "-m", "gpufleet", "monitor", router.url, "--interval", "0.3"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        sender = threading.Thread(target=traffic)
        try:
            sender.start()
            # Several polls while requests flow, so the last frame has a rate to show: wait
            # (with a deadline) until the monitor is connected to the router, however long
            # its start takes on a loaded machine, then for a few of its 0.3 s polls.
            _wait_connected(proc.pid, int(router.url.rsplit(":", 1)[1]), deadline_s=60)
            time.sleep(1.5)
            assert proc.poll() is None, "the live monitor exited on its own"
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=20)
        finally:
            stop.set()
            sender.join(timeout=15)
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)
        stats = get_json(router.url + "/stats")

    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    assert f"{router.url} · 2 worker(s)" in out
    head = table_row(out, "worker")
    assert head[:8] == [
        "worker",
        "device",
        "state",
        "in-flight",
        "queue",
        "served",
        "errors",
        "req/s",
    ]
    served_now = {w["id"]: w["served"] for w in stats["workers"]}
    rates = []
    for wid in ("w0", "w1"):
        cells = dict(zip(head, table_row(out, wid), strict=True))
        assert cells["state"] == "ready"
        # The last frame came from a poll taken while requests flowed: some served then,
        # no more than the router counted by the end.
        assert 0 < int(cells["served"].replace(",", "")) <= served_now[wid]
        rates.append(float(cells["req/s"]))
    # A rate needs two polls: a live one proves the monitor kept polling, not one snapshot.
    assert sum(rates) > 0, out
    assert sent > 0
