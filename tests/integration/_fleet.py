"""Helpers of the fleet's integration tests: a fake 4-GPU nvidia-smi and a tiny HTTP server."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

UUIDS = [f"GPU-{i}{i}{i}{i}{i}{i}{i}{i}-aaaa-bbbb-cccc-00000000000{i}" for i in range(4)]

_NVIDIA_SMI = """#!{python}
import sys
uuids = {uuids!r}
if any(a.startswith("--query-gpu") for a in sys.argv[1:]):
    for i, u in enumerate(uuids):
        print(f"{{i}}, {{u}}, NVIDIA A100-SXM4-80GB, 81920 MiB")
elif "-L" in sys.argv[1:]:
    for i, u in enumerate(uuids):
        print(f"GPU {{i}}: NVIDIA A100-SXM4-80GB (UUID: {{u}})")
else:
    sys.exit(2)
"""

#: Serves /health and records the environment it was started with (``{port}`` ``{index}``).
_ECHO_SERVER = """
import http.server, json, os, sys
port, out = int(sys.argv[1]), sys.argv[2]
record = {"pid": os.getpid(), "cvd": os.environ.get("CUDA_VISIBLE_DEVICES"),
          "index": sys.argv[3], "gpu": sys.argv[4]}
with open(os.path.join(out, f"{port}.json"), "w") as f:
    json.dump(record, f)

class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps(record).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_POST = do_GET
    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
"""


def fake_nvidia_smi(folder: Path) -> Path:
    """Write an executable ``nvidia-smi`` that prints a 4-GPU machine; the folder for PATH."""
    folder.mkdir(parents=True, exist_ok=True)
    exe = folder / "nvidia-smi"
    exe.write_text(_NVIDIA_SMI.format(python=sys.executable, uuids=UUIDS))
    exe.chmod(0o755)
    return folder


def echo_server(folder: Path) -> Path:
    """Write the echo server script; run it as ``python SCRIPT {port} OUT {index} {gpu}``."""
    script = folder / "echo_server.py"
    script.write_text(_ECHO_SERVER)
    return script


def path_with(folder: Path) -> str:
    """PATH with ``folder`` first."""
    return f"{folder}{os.pathsep}{os.environ.get('PATH', '')}"


def post(url: str, body: Any, timeout: float = 30.0) -> tuple[int, Any]:
    """POST JSON; (status, decoded body)."""
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(resp.status), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode(errors="replace")


def read_state(cwd: Path) -> dict[str, Any]:
    """The fleet's state file (empty dict while it is being written for the first time)."""
    try:
        data = json.loads((cwd / ".gpufleet" / "state.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def wait_state(cwd: Path, check: Any, timeout: float = 30.0) -> dict[str, Any]:
    """Poll the state file until ``check(state)`` is true."""
    deadline = time.monotonic() + timeout
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        state = read_state(cwd)
        if state and check(state):
            return state
        time.sleep(0.1)
    raise AssertionError(f"state not reached in {timeout}s: {json.dumps(state, indent=1)}")


def is_alive(pid: int) -> bool:
    """True when ``pid`` runs (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def gpufleet(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``gpufleet ARGS`` in ``cwd`` (as ``python -m gpufleet``), output captured."""
    return subprocess.run(
        [sys.executable, "-m", "gpufleet", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=check,
    )


def get_json(url: str) -> Any:
    """GET ``url`` and decode its JSON answer."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.load(resp)


def table_row(out: str, name: str) -> list[str]:
    """The cells of the (rich or plain) table row in ``out`` that starts with ``name``."""
    for line in out.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃|]", line) if c.strip()]
        if cells and cells[0] == name:
            return cells
    raise AssertionError(f"no row {name!r} in:\n{out}")
