"""Start-up mistakes answered at once: the exact command, its exit status, how long it took,
and the one line it printed (issue 14)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from gpufleet.testing import run_server, wait_healthy

_BAD_MODEL = """
from gpufleet import Model

class Bad(Model):
    name = "bad"

    def setup(self, device):
        raise RuntimeError("weights not found at /data/ckpt")

    def predict(self, batch):
        return batch
"""


@dataclass
class Done:
    code: int
    out: str
    err: str
    seconds: float

    @property
    def lines(self) -> list[str]:
        """What it printed on stderr, line by line."""
        return self.err.splitlines()


def gpufleet(cwd: Path, *args: str, timeout: float = 60) -> Done:
    """``gpufleet ARGS`` as a user types it; its status, output and time."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUFLEET_")}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "gpufleet", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**env, "HF_HUB_OFFLINE": "1"},
        check=False,
    )
    return Done(done.returncode, done.stdout, done.stderr, time.monotonic() - started)


@contextmanager
def held_port() -> Iterator[int]:
    """A port this test process listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def test_unknown_model_is_one_line_and_nothing_starts(tmp_path: Path) -> None:
    done = gpufleet(tmp_path, "up", "--model", "minilmm", "--cpu-workers", "1")
    assert done.code == 2
    assert done.lines == [
        "gpufleet: error: unknown model 'minilmm': did you mean 'minilm'? (built-in: "
        "image-demo, minilm, synthetic; or package.module:Class, path/to/file.py:Class)"
    ]
    assert done.seconds < 10
    assert not (tmp_path / "logs").exists()
    alone = gpufleet(tmp_path, "worker", "--model", "minilmm", "--port", "0")
    assert (alone.code, alone.lines) == (2, done.lines)  # before it listens


def test_model_class_missing_from_its_file(tmp_path: Path) -> None:
    (tmp_path / "mine.py").write_text(_BAD_MODEL)
    done = gpufleet(tmp_path, "up", "--model", "mine.py:Bda", "--gpus", "none")
    assert (done.code, done.lines) == (
        2,
        ["gpufleet: error: mine.py has no class 'Bda' (did you mean 'Bad'?)"],
    )


def test_unknown_policy_lists_the_choices(tmp_path: Path) -> None:
    done = gpufleet(tmp_path, "up", "--policy", "fastest", "--gpus", "none")
    assert done.code == 2
    assert done.lines == [
        "gpufleet: error: --policy must be one of prefix, capacity, round-robin, "
        "least-outstanding, power-of-two, weighted, sticky; got 'fastest'"
    ]
    assert done.seconds < 10


def test_port_in_use_names_the_process_holding_it(tmp_path: Path) -> None:
    with held_port() as port:
        for command in (
            ["up", "--model", "synthetic", "--gpus", "none", "--port", str(port)],
            ["worker", "--model", "synthetic", "--port", str(port)],
            ["router", "--worker", "http://127.0.0.1:9", "--port", str(port)],
        ):
            done = gpufleet(tmp_path, *command)
            assert done.code == 2, (command, done.err)
            held = f"held by pid {os.getpid()}: "  # this test's process, and its command
            assert len(done.lines) == 1, (command, done.err)
            assert done.lines[0].startswith(
                f"gpufleet: error: port {port} on 127.0.0.1 is in use ({held}"
            ), done.lines
            assert done.lines[0].endswith("; pick another --port or 0")
            assert done.seconds < 10, command


def test_misspelt_config_names_file_line_and_suggestion(tmp_path: Path) -> None:
    (tmp_path / "fleet.yaml").write_text("fleeet:\n  model: synthetic\n")
    done = gpufleet(tmp_path, "up", "--config", "fleet.yaml")
    assert done.code == 2
    assert done.lines == [
        "gpufleet: error: fleet.yaml, line 1: unknown section 'fleeet' (did you mean "
        "'fleet'?); sections: fleet, worker, router, client, ray, bench, monitor"
    ]
    # The workers' own section, which only they read, is checked before they start.
    (tmp_path / "fleet.yaml").write_text("fleet:\n  model: synthetic\nworker:\n  max_wiat_ms: 2\n")
    done = gpufleet(tmp_path, "up", "--config", "fleet.yaml")
    assert done.lines == [
        "gpufleet: error: fleet.yaml, line 4: unknown setting 'max_wiat_ms' in worker "
        "(did you mean 'max_wait_ms'?)"
    ]
    (tmp_path / "fleet.yaml").write_text("fleet:\n  model: [synthetic\n")
    done = gpufleet(tmp_path, "up", "--config", "fleet.yaml")
    assert done.code == 2
    assert done.lines[0].startswith("gpufleet: error: fleet.yaml, line 3, column 1: not valid YAML")
    assert not (tmp_path / "logs").exists()


def test_a_model_that_fails_to_load_stops_up_with_its_last_lines(tmp_path: Path) -> None:
    (tmp_path / "bad.py").write_text(_BAD_MODEL)
    args = ["up", "--model", "bad.py:Bad", "--gpus", "none", "--cpu-workers", "2", "--port", "0"]
    done = gpufleet(tmp_path, *args)
    assert done.code == 1, done.out + done.err
    assert "ready at" not in done.out
    # Its reason, from the worker's own log, with no need to open it.
    reason = re.search(r"^  \| .* model bad\.py:Bad failed to load: (.*)$", done.out, re.M)
    assert reason is not None, done.out
    assert reason.group(1) == "weights not found at /data/ckpt"
    assert "(the same lines)" in done.out  # the second worker's lines are not repeated
    assert "gpufleet: not started: no worker of pool default became ready" in done.out
    assert done.seconds < 30

    detached = gpufleet(tmp_path, *args, "--detach")
    assert detached.code == 1
    assert "weights not found at /data/ckpt" in detached.err
    assert "no worker of pool default became ready" in detached.err
    assert detached.seconds < 30
    assert gpufleet(tmp_path, "status").code == 3


def test_a_cmd_pool_is_probed_on_its_ready_path(tmp_path: Path) -> None:
    server = "python3 -m http.server {port} --bind {host}"
    args = ["up", "--cmd", server, "--gpus", "none", "--cpu-workers", "1"]
    with run_server([*args, "--ready-path", "/"], cwd=tmp_path, ready=False) as fleet:
        # Its probes of / say ready to the router too: the listing comes through.
        wait_healthy(fleet.url, path="/", timeout=20)
        with urllib.request.urlopen(f"{fleet.url}/", timeout=5) as resp:
            assert b"Directory listing" in resp.read()
    # Without --ready-path the server's 404 on /health is said within seconds.
    done = gpufleet(tmp_path, *args, "--port", "0", "--startup-timeout", "4")
    assert done.code == 1
    assert "GET /health → 404: set --ready-path" in done.err
    assert "not ready after 4s" in done.out
