"""`gpufleet export nginx` checked by Debian's nginx: `nginx -t`, then real requests through it."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from gpufleet.operate.export import ExportLayout, ExportOptions, render
from gpufleet.testing import run_worker
from gpufleet.testing._process import free_port, http_status
from tests.unit._export import POOLS_YAML, layout_of, write_config

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
pytestmark = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (scripts/system-deps)"
)


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("GPUFLEET_")}


def _main_conf(folder: Path, snippet: Path) -> Path:
    """A whole nginx.conf around the exported snippet, everything under ``folder``."""
    temp = {name: folder / name for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
    lines = [
        # As root, nginx would switch its workers to nobody, who cannot read the temp dir.
        "user root;" if os.geteuid() == 0 else "",
        "worker_processes 1;",
        f"pid {folder / 'nginx.pid'};",
        f"error_log {folder / 'error.log'} info;",
        "events { worker_connections 256; }",
        "http {",
        "    access_log off;",
        *(f"    {name}_temp_path {path};" for name, path in temp.items()),
        f"    include {snippet};",
        "}",
    ]
    conf = folder / "nginx.conf"
    conf.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return conf


def _nginx(folder: Path, conf: Path, *args: str) -> list[str]:
    assert NGINX is not None
    return [NGINX, "-p", str(folder), "-e", str(folder / "error.log"), "-c", str(conf), *args]


def _check(folder: Path, text: str) -> subprocess.CompletedProcess[str]:
    snippet = folder / "gpufleet.conf"
    snippet.write_text(text, encoding="utf-8")
    conf = _main_conf(folder, snippet)
    return subprocess.run(
        _nginx(folder, conf, "-t"), capture_output=True, text=True, timeout=30, check=False
    )


def test_nginx_accepts_the_exported_files(tmp_path: Path) -> None:
    # Through the command line, with pools (locations) from a YAML file.
    config = write_config(tmp_path, POOLS_YAML)
    out = tmp_path / "pools.conf"
    subprocess.run(
        [sys.executable, "-m", "gpufleet", "export", "nginx", "--config", str(config),
         "--port", str(free_port()), "-o", str(out)],
        check=True, timeout=60, env=_clean_env(),
    )  # fmt: skip
    checked = _check(tmp_path, out.read_text())
    assert checked.returncode == 0, checked.stderr
    assert "syntax is ok" in checked.stderr
    # nginx does reject a broken file: the check is not a formality.
    broken = _check(tmp_path, out.read_text().replace("least_conn;", "least_conn"))
    assert broken.returncode != 0


@contextmanager
def _running_nginx(folder: Path, text: str, port: int) -> Iterator[str]:
    snippet = folder / "gpufleet.conf"
    snippet.write_text(text, encoding="utf-8")
    conf = _main_conf(folder, snippet)
    proc = subprocess.Popen(
        _nginx(folder, conf, "-g", "daemon off;"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while http_status(url + "/health") != 200:
            if proc.poll() is not None or time.monotonic() > deadline:
                log = (folder / "error.log").read_text(errors="replace")
                raise RuntimeError(f"nginx did not serve on {url}:\n{log}")
            time.sleep(0.05)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)


def _post(url: str, body: dict[str, Any]) -> tuple[int, bytes]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return int(resp.status), resp.read()


def test_requests_through_nginx_reach_both_workers(tmp_path: Path) -> None:
    port = free_port()
    layout = layout_of({"model": "synthetic", "cpu_workers": 2, "port": port})
    with (
        run_worker("synthetic", "--model-arg", "base_ms=40") as w1,
        run_worker("synthetic", "--model-arg", "base_ms=40") as w2,
    ):
        # The workers bound free ports: point the layout's two slots at them.
        pool = layout.pools[0]
        slots = tuple(
            dataclasses.replace(s, port=w.port) for s, w in zip(pool.slots, (w1, w2), strict=True)
        )
        layout = dataclasses.replace(layout, pools=(dataclasses.replace(pool, slots=slots),))
        assert isinstance(layout, ExportLayout)
        text = render("nginx", layout, ExportOptions())
        with _running_nginx(tmp_path, text, port) as url:
            with ThreadPoolExecutor(4) as pool_:
                answers = list(
                    pool_.map(lambda i: _post(url + "/predict", {"input": f"x{i}"}), range(16))
                )
            assert all(status == 200 for status, _ in answers)
            outputs = [json.loads(body)["output"] for _, body in answers]
            assert sorted(o["echo"] for o in outputs) == sorted(f"x{i}" for i in range(16))
            assert {o["pid"] for o in outputs} == {w1.pid, w2.pid}
            # A stream passes through as server-sent events.
            status, body = _post(url + "/predict", {"input": "s", "stream": True})
            assert status == 200
            assert body.count(b"data:") >= 2, body
            # `proxy_next_upstream error`: a worker that refuses connections is passed over.
            w2.stop()
            answers = [_post(url + "/predict", {"input": f"y{i}"}) for i in range(6)]
            assert [status for status, _ in answers] == [200] * 6
            assert {json.loads(body)["output"]["pid"] for _, body in answers} == {w1.pid}


def _post_status(url: str, body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    try:
        status, answer = _post(url, body)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), exc.read()
    return status, {}, answer


def test_a_full_worker_503_reaches_the_client_through_nginx(tmp_path: Path) -> None:
    # nginx does not pass on a POST it began to send, so it cannot do the router's retry of
    # a full queue: the worker's 503 + Retry-After is what the client gets (as the file says).
    port = free_port()
    layout = layout_of({"model": "synthetic", "cpu_workers": 2, "port": port})
    full_args = ("--max-queue", "1", "--model-arg", "stream_chunks=400")
    with (
        run_worker("synthetic", *full_args, "--model-arg", "per_item_ms=25") as full,
        run_worker("synthetic", "--model-arg", "base_ms=1") as free,
    ):
        pool = layout.pools[0]
        slots = tuple(
            dataclasses.replace(s, port=w.port)
            for s, w in zip(pool.slots, (full, free), strict=True)
        )
        layout = dataclasses.replace(layout, pools=(dataclasses.replace(pool, slots=slots),))
        assert isinstance(layout, ExportLayout)
        text = render("nginx", layout, ExportOptions())
        # A stream straight to `full` holds its one queue slot (10 s): it answers 503 now.
        req = urllib.request.Request(
            full.url + "/predict",
            data=json.dumps({"input": "hold", "stream": True}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with (
            urllib.request.urlopen(req, timeout=30) as stream,
            _running_nginx(tmp_path, text, port) as url,
        ):
            assert stream.readline().startswith(b"data:")
            answers = [_post_status(url + "/predict", {"input": f"z{i}"}) for i in range(6)]
    statuses = [status for status, _, _ in answers]
    assert sorted(set(statuses)) == [200, 503], statuses
    for status, headers, body in answers:
        if status == 503:
            assert json.loads(body)["error"] == "WorkerOverloaded"
            assert "Retry-After" in headers
        else:
            assert json.loads(body)["output"]["pid"] == free.pid
