"""Which router runs a batch: claims that the operating system or the database let go of
when their holder dies.

Several routers may share one store (PostgreSQL for a fleet of machines; one SQLite
folder for two routers on one box). Each runs a batch only while it holds the batch's
claim, so a batch is never sent by two routers at once, and a batch whose router died
(``kill -9``, a lost machine) is taken over by another at its next look — without a
lease to wait out, because the claim dies with its holder:

- ``FileClaims`` (SQLite): an ``flock`` on ``locks/<batch id>`` in the store's folder.
  The kernel drops it when the holder's process exits, however it exits.
- PostgreSQL: a session advisory lock (``pg_try_advisory_lock``) on a connection of its
  own (``batches/postgres.py``); the server drops it when that connection ends, which a
  killed router's kernel does at once (a lost machine: when the server's TCP keepalive
  gives up on it).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from pathlib import Path
from typing import Final

_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,128}")


class FileClaims:
    """Claims as ``flock``s on one file per batch in ``folder`` (blocking calls: run off the
    event loop)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._held: dict[str, int] = {}

    def claim(self, batch_id: str) -> bool:
        """Take the batch's claim; False when another process holds it."""
        if batch_id in self._held:
            return True
        if not _ID.fullmatch(batch_id):
            raise ValueError(f"not a batch id: {batch_id!r}")
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.folder / batch_id
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        # The file may have been removed by its last holder between our open and lock:
        # then the lock is on a file nobody else can see, and a new one may exist.
        try:
            same = os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            return self.claim(batch_id)
        self._held[batch_id] = fd
        return True

    def release(self, batch_id: str) -> None:
        """Let the batch's claim go (removing its file while still holding it)."""
        fd = self._held.pop(batch_id, None)
        if fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            (self.folder / batch_id).unlink()
        os.close(fd)

    def release_all(self) -> None:
        """Let every claim go (the store closes)."""
        for batch_id in list(self._held):
            self.release(batch_id)


__all__ = ["FileClaims"]
