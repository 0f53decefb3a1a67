"""A size-rotated log file for one child's stdout and stderr (``worker-0-8001.log``, ``.1``, …)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import BinaryIO


class RotatingLog:
    """Append bytes to ``path``; past ``max_bytes`` it becomes ``path.1`` (keeping ``backups``)."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path = path
        self._max_bytes = max(1, max_bytes)
        self._backups = max(0, backups)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: BinaryIO | None = path.open("ab")
        self._size = self._file.tell()

    def write(self, data: bytes) -> None:
        """Append ``data``; rotate first when it would cross the size limit."""
        if self._file is None:
            return
        if self._size and self._size + len(data) > self._max_bytes:
            self._file = self._rotate(self._file)
        self._file.write(data)
        self._file.flush()
        self._size += len(data)

    def _rotate(self, current: BinaryIO) -> BinaryIO:
        current.close()
        if self._backups == 0:
            self.path.unlink(missing_ok=True)
        else:
            for i in range(self._backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{i}")
                if older.exists():
                    older.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
            with contextlib.suppress(FileNotFoundError):
                self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        self._size = 0
        return self.path.open("ab")

    def close(self) -> None:
        """Close the file; later writes are dropped."""
        if self._file is not None:
            self._file.close()
            self._file = None


#: How much of a log's end ``last_lines`` reads.
_TAIL_BYTES = 16 * 1024


def log_size(path: Path) -> int:
    """The log's size now (0 when it does not exist): where a new run's lines start."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def last_lines(path: Path, since: int = 0, count: int = 6) -> list[str]:
    """The last ``count`` non-empty lines written to ``path`` after offset ``since``.

    A log rotated meanwhile (smaller than ``since``) is read from its start.
    """
    try:
        with path.open("rb") as f:
            size = f.seek(0, 2)
            start = since if since <= size else 0
            f.seek(max(start, size - _TAIL_BYTES))
            data = f.read()
    except OSError:
        return []
    lines = [line.rstrip() for line in data.decode("utf-8", "replace").splitlines()]
    return [line for line in lines if line.strip()][-count:]


__all__ = ["RotatingLog", "last_lines", "log_size"]
