"""One atomic file write: a reader sees the old file or the new one, never half of one.

Every file gpufleet writes whole (port files, the run directory's pid and state files, a
job's outputs, a bench report, an exported unit file) goes through ``write_atomic``: a new
temporary file in the same folder, created ``O_EXCL | O_NOFOLLOW`` relative to a
descriptor of that folder (never through a link planted there), written, flushed to disk
(``fsync``), then renamed over the target (``os.replace``), which replaces a link at the
target, never its target's contents.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

#: A new temporary file: never an existing entry, never through a link.
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
#: Fresh temporary names tried before giving up (each collision needs a planted file).
_TRIES = 8


def _umask_mode() -> int:
    """``0o666`` less the process umask: what ``open(path, "w")`` would create."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_atomic(
    path: str | Path,
    data: bytes | str,
    *,
    mode: int | None = None,
    tmp_suffix: str = ".tmp",
) -> Path:
    """Write ``data`` (``str`` as UTF-8) to ``path`` via a temporary file and a rename (blocking).

    Args:
        path: the file to replace; its folder must exist.
        data: the whole new contents.
        mode: permission bits of the new file; None: as ``open()`` creates (0o666 less the
            umask). Set explicitly with ``fchmod``, so the umask does not narrow it.
        tmp_suffix: the temporary's name is ``.{name}.{pid}.{random}{tmp_suffix}``, for a
            caller that sweeps what a killed run left (``.*{tmp_suffix}``).

    Raises:
        OSError: the folder is missing or not writable, the disk is full, a directory is
            in the way.
    """
    target = Path(path)
    name = target.name
    payload = data.encode("utf-8") if isinstance(data, str) else data
    dir_fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd, tmp = _create_temporary(name, tmp_suffix, dir_fd)
        try:
            try:
                os.fchmod(fd, _umask_mode() if mode is None else mode)
                view = memoryview(payload)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    return target


def _create_temporary(name: str, suffix: str, dir_fd: int) -> tuple[int, str]:
    for _ in range(_TRIES):
        tmp = f".{name}.{os.getpid()}.{secrets.token_hex(4)}{suffix}"
        with contextlib.suppress(FileExistsError):
            return os.open(tmp, _CREATE, 0o600, dir_fd=dir_fd), tmp
    raise FileExistsError(f"no free temporary name for {name} after {_TRIES} tries")


__all__ = ["write_atomic"]
