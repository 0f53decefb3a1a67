"""Start a real gpufleet process on 127.0.0.1, port 0, and know when it is ready."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    """A port that was free a moment ago (only for tools that cannot take port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """GET ``url`` and return its status, or None when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return None


def wait_healthy(
    url: str,
    *,
    timeout: float = 60.0,
    path: str = "/health",
    proc: subprocess.Popen[bytes] | None = None,
) -> None:
    """Poll ``url + path`` until it answers 200.

    Raises:
        TimeoutError: not healthy within ``timeout`` seconds.
        RuntimeError: ``proc`` exited first.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} was healthy")
        if http_status(url + path, timeout=1.0) == 200:
            return
        time.sleep(0.05)
    raise TimeoutError(f"{url}{path} not healthy after {timeout:.0f}s")


@dataclass
class ServerProcess:
    """A running gpufleet process: its URL, its Popen, and its log file.

    ``workdir`` (the port file and the log) is removed when the process's block ends;
    ``log()`` still answers then, from the copy read just before.
    """

    proc: subprocess.Popen[bytes]
    url: str
    port: int
    log_path: Path
    workdir: Path
    _closed: bool = field(default=False, repr=False)
    _final_log: str | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        """Everything the process wrote to stdout and stderr so far."""
        if self._final_log is not None:
            return self._final_log
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def remove_workdir(self) -> None:
        """Keep the log in memory, then remove the temporary directory (the process ended)."""
        with contextlib.suppress(OSError):
            self._final_log = self.log()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the process."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL the process and reap it."""
        self.signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, wait up to ``timeout``, then SIGKILL; return the exit status."""
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._closed = True
        return int(self.proc.returncode)


def _read_port(port_file: Path, proc: subprocess.Popen[bytes], timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before binding a port")
        with contextlib.suppress(FileNotFoundError, ValueError):
            text = port_file.read_text().strip()
            if text:
                return int(text)
        time.sleep(0.02)
    raise TimeoutError(f"no port written to {port_file} after {timeout:.0f}s")


@contextlib.contextmanager
def run_module(
    module: str, args: Sequence[str], *, port: int = 0, timeout: float = 30.0
) -> Iterator[ServerProcess]:
    """Run ``python -m MODULE ARGS --port P --port-file F`` on 127.0.0.1 until the block ends.

    For the test servers of ``gpufleet.testing`` (upstreams, the simulated LLM engine):
    the block starts once ``/health`` answers 200; SIGTERM at the end, SIGKILL 10 s later.
    """
    name = module.rsplit(".", 1)[-1].replace("_", "-")
    workdir = Path(tempfile.mkdtemp(prefix=f"gpufleet-{name}-"))
    port_file = workdir / "port"
    log_path = workdir / "process.log"
    cmd = [sys.executable, "-m", module, *args, "--port", str(port), "--port-file", str(port_file)]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = ServerProcess(proc, "", port, log_path, workdir)
    try:
        try:
            bound = _read_port(port_file, proc, timeout)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{module} did not start ({exc}): {log_path.read_text()}") from None
        server.url = f"http://127.0.0.1:{bound}"
        server.port = bound
        wait_healthy(server.url, timeout=timeout, proc=proc)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        server.remove_workdir()


@contextlib.contextmanager
def run_server(
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    ready: bool = True,
    timeout: float = 90.0,
    cwd: str | Path | None = None,
) -> Iterator[ServerProcess]:
    """Run ``gpufleet ARGS --host 127.0.0.1 --port 0 --port-file F`` until the block ends.

    With ``ready`` (the default) the block starts once ``/health`` answers 200.
    """
    workdir = Path(tempfile.mkdtemp(prefix="gpufleet-test-"))
    port_file = workdir / "port"
    log_path = workdir / "process.log"
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    cmd = [
        sys.executable,
        "-m",
        "gpufleet",
        *args,
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--port-file",
        str(port_file),
    ]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=cwd,
            start_new_session=True,
        )
    server = ServerProcess(proc, "", 0, log_path, workdir)
    try:
        server.port = _read_port(port_file, proc, timeout)
        server.url = f"http://127.0.0.1:{server.port}"
        if ready:
            wait_healthy(server.url, timeout=timeout, proc=proc)
        yield server
    except BaseException:
        if log_path.exists():
            sys.stderr.write(f"--- log of {' '.join(args)} ---\n{log_path.read_text()}\n")
        raise
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        # Children the process may have left behind (its own process group).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        server.remove_workdir()


def run_worker(
    model: str = "synthetic",
    *args: str,
    env: Mapping[str, str] | None = None,
    ready: bool = True,
    timeout: float = 90.0,
) -> contextlib.AbstractContextManager[ServerProcess]:
    """Run ``gpufleet worker --model MODEL ARGS`` on 127.0.0.1, port 0."""
    return run_server(["worker", "--model", model, *args], env=env, ready=ready, timeout=timeout)


def run_router(
    workers: Sequence[str],
    *args: str,
    env: Mapping[str, str] | None = None,
    ready: bool = True,
    timeout: float = 60.0,
) -> contextlib.AbstractContextManager[ServerProcess]:
    """Run ``gpufleet router --worker URL ... ARGS`` on 127.0.0.1, port 0."""
    worker_args = [a for url in workers for a in ("--worker", url)]
    return run_server(["router", *worker_args, *args], env=env, ready=ready, timeout=timeout)
