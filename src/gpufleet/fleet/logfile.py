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


__all__ = ["RotatingLog"]
