"""A real PostgreSQL server for tests: Debian's binaries, a temp folder, a unix socket.

PostgreSQL refuses to run as root, and CI runs as root: the server then runs as
``nobody`` (``setpriv``), in a folder of its own under the system's temp dir, listening
only on a unix socket in that folder (no TCP port to collide with). Tests skip, saying
why, when no PostgreSQL binaries or no ``psycopg`` are installed
(``scripts/system-deps`` installs the ``postgresql`` package where it can).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

#: How long the server may take to start or stop.
START_S = 60.0


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), reverse=True)
    if found:
        return Path(found[0]).parent
    postgres = shutil.which("postgres")
    return Path(postgres).parent if postgres else None


def skip_reason() -> str | None:
    """Why no PostgreSQL test can run here, or None when one can."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'gpufleet[postgres]')"
    bin_dir = _bin_dir()
    if bin_dir is None or not (bin_dir / "initdb").exists():
        return "no PostgreSQL binaries (apt-get install postgresql; scripts/system-deps)"
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        return "running as root and no setpriv to run PostgreSQL as nobody"
    return None


def _as_owner(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    nobody = pwd.getpwnam("nobody")
    return [
        "setpriv",
        f"--reuid={nobody.pw_uid}",
        f"--regid={nobody.pw_gid}",
        "--clear-groups",
        *argv,
    ]


@contextlib.contextmanager
def running_postgres() -> Iterator[str]:
    """Start a throwaway server; yield the URL of its ``postgres`` database."""
    reason = skip_reason()
    if reason is not None:
        pytest.skip(reason)
    bin_dir = _bin_dir()
    assert bin_dir is not None
    root = Path(tempfile.mkdtemp(prefix="gpufleet-pg-"))
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        os.chown(root, nobody.pw_uid, nobody.pw_gid)
    data = root / "data"
    env = {**os.environ, "LC_ALL": "C", "TZ": "UTC"}
    subprocess.run(
        _as_owner(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
            ]
        ),
        check=True,
        capture_output=True,
        env=env,
        cwd=root,
        timeout=START_S,
    )
    with (root / "server.log").open("wb") as log:
        server = subprocess.Popen(
            _as_owner(
                [
                    str(bin_dir / "postgres"),
                    "-D",
                    str(data),
                    "-k",
                    str(root),
                    "-c",
                    "listen_addresses=",
                    "-c",
                    "fsync=off",
                    "-p",
                    "5432",
                ]
            ),
            stdout=subprocess.DEVNULL,
            stderr=log,
            env=env,
            cwd=root,
        )
    url = f"postgresql://postgres@/postgres?host={root}&port=5432"
    try:
        _wait_ready(url, server, root)
        yield url
    finally:
        server.terminate()  # SIGTERM: "smart" shutdown; the tests' connections are closed
        try:
            server.wait(timeout=START_S)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        shutil.rmtree(root, ignore_errors=True)


def _wait_ready(url: str, server: subprocess.Popen[bytes], root: Path) -> None:
    import psycopg

    deadline = time.monotonic() + START_S
    while True:
        if server.poll() is not None:
            log = (root / "server.log").read_text(errors="replace")
            raise RuntimeError(f"postgres exited {server.returncode}: {log[-2000:]}")
        try:
            with psycopg.connect(url, connect_timeout=2):
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.05)


def new_database(url: str, name: str) -> str:
    """Create database ``name`` on the server at ``url``; its URL."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return url.replace("/postgres?", f"/{name}?", 1)
