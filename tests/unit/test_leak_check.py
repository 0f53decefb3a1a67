"""The leak check every test runs under (tests/conftest.py) sees what it is meant to see."""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile

from tests.conftest import _channels, _children, _temporaries


def test_a_child_process_a_socket_and_a_temporary_folder_are_seen_until_gone() -> None:
    before = (set(_children()), _channels(), _temporaries())
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    sock = socket.socket()
    with tempfile.TemporaryDirectory() as folder:
        try:
            assert proc.pid in _children()
            assert _channels() - before[1]
            assert folder.rsplit("/", 1)[1] in _temporaries() - before[2]
        finally:
            proc.kill()
            proc.wait()
            sock.close()
    assert set(_children()) == before[0]
    assert _channels() == before[1]
    assert _temporaries() == before[2]
