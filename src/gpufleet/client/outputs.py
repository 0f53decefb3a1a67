"""Where a job's outputs go: safe file names, atomic writes, and the resume record.

No item id can name a file outside the output folder: names keep only ``[A-Za-z0-9._-]``,
never start with a dot, are capped in length (with a hash of the id so long ids stay
distinct), and are made unique (case-insensitively) in the order items appear, so the same
prompts file always maps to the same names. Every write is a temporary file in the same
folder, flushed to disk, then renamed over the final name.

Nothing here follows a symbolic link planted in the folder (issue 13): files are opened
relative to the folder with ``O_NOFOLLOW`` (temporaries also ``O_EXCL``), a rename over a
link replaces the link (its target untouched), ``results.jsonl`` is opened once per job
and appended to through that descriptor, and a resume reads only regular files.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import stat
import unicodedata
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import msgspec

from gpufleet import _files
from gpufleet.errors import ClientError

log = logging.getLogger("gpufleet.client")

#: Longest file stem; longer ids are cut and get a hash suffix.
MAX_STEM = 100
TMP_SUFFIX = ".gpufleet-tmp"
RESULTS_FILE = "results.jsonl"
SUMMARY_FILE = "summary.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10))}
_RESERVED |= {f"lpt{i}" for i in range(10)}
_NOT_OUTPUTS = {RESULTS_FILE.lower(), SUMMARY_FILE.lower()}
_EXTENSIONS = {
    "application/json": ".json",
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/webp": ".webp",
    "image/gif": ".gif",
    "audio/wav": ".wav",
    "audio/x-wav": ".wav",
    "audio/mpeg": ".mp3",
    "text/plain": ".txt",
    "model/gltf-binary": ".glb",
}


def safe_stem(item_id: str) -> str:
    """A file stem for ``item_id`` with no path separators, no ``..`` and no leading dot."""
    text = unicodedata.normalize("NFKC", item_id)
    stem = _UNSAFE.sub("_", text).strip("._-") or "item"
    stem = re.sub(r"\.{2,}", ".", stem)
    if stem.split(".", 1)[0].lower() in _RESERVED:
        stem = f"_{stem}"
    if len(stem) > MAX_STEM:
        digest = hashlib.sha256(item_id.encode("utf-8", "surrogatepass")).hexdigest()[:12]
        stem = f"{stem[: MAX_STEM - 13]}-{digest}"
    return stem


def unique_stems(ids: Iterable[str]) -> list[str]:
    """One stem per id, in order; repeats get ``-2``, ``-3``… (compared case-insensitively)."""
    taken: set[str] = set()
    stems = []
    for item_id in ids:
        base = safe_stem(item_id)
        stem, n = base, 1
        while stem.lower() in taken or f"{stem}.json".lower() in _NOT_OUTPUTS:
            n += 1
            stem = f"{base}-{n}"
        taken.add(stem.lower())
        stems.append(stem)
    return stems


def extension_for(content_type: str) -> str:
    """The file extension for a media type (``.bin`` when unknown)."""
    return _EXTENSIONS.get(content_type.split(";", 1)[0].strip().lower(), ".bin")


def inside(folder: Path, name: str) -> Path:
    """``folder / name`` for a plain entry name of ``folder`` (never resolved through links).

    Raises:
        ClientError: the name is not one entry of the folder (a separator, ``..``): a bug,
            since names are sanitised.
    """
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise ClientError(f"refusing to write {name!r} outside {folder}")
    return folder.resolve() / name


@contextlib.contextmanager
def _folder_fd(folder: Path) -> Iterator[int]:
    """A descriptor of ``folder`` to open its entries by (``dir_fd=``)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def write_atomic(folder: Path, name: str, data: bytes) -> Path:
    """Write ``data`` to ``folder/name`` via a temporary file and a rename (blocking).

    Never through a symbolic link: the temporary file is created new (``O_EXCL |
    O_NOFOLLOW``) and renamed over ``name``, which replaces a link there, not its target.

    Raises:
        OSError: the file could not be written (the folder, the disk, a directory named so).
    """
    return _files.write_atomic(inside(folder, name), data, tmp_suffix=TMP_SUFFIX)


def remove_stale_temporaries(folder: Path) -> int:
    """Delete temporary files a killed run left behind; returns how many."""
    count = 0
    for path in folder.glob(f".*{TMP_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            count += 1
    return count


def encode_output(output: Any, content_type: str) -> tuple[bytes, str]:
    """The bytes to store for an output and their extension (JSON values as ``.json``)."""
    if isinstance(output, (bytes, bytearray, memoryview)):
        return bytes(output), extension_for(content_type)
    text = json.dumps(output, ensure_ascii=False, indent=2) + "\n"
    return text.encode("utf-8"), ".json"


class ResultRecord(msgspec.Struct):
    """One line of ``results.jsonl``: what became of one item (the keys in this order)."""

    id: str
    #: The item's output stem.
    key: str
    #: Its output file in the folder (None when it failed).
    file: str | None
    status: str
    endpoint: str | None = None
    upstream: str | None = None
    attempts: int = 0
    seconds: float = 0.0
    seed: int | None = None
    error: str | None = None


class _OkLine(msgspec.Struct):
    """What a resume reads of a ``results.jsonl`` line."""

    key: str
    file: str | None
    status: str


_OK_LINE = msgspec.json.Decoder(_OkLine)


class ResultsLog:
    """``results.jsonl``: one line per finished item, appended and flushed to disk."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / RESULTS_FILE
        self._fd: int | None = None

    def done(self) -> dict[str, str]:
        """``{stem: file}`` of items recorded ``ok`` whose file is still there (blocking).

        A ``results.jsonl`` that is a link is not read (nothing is done yet), nor does an
        output that is a link count as done (it is written again, replacing the link).
        """
        done: dict[str, str] = {}
        with _folder_fd(self.folder) as dir_fd:
            try:
                fd = os.open(
                    RESULTS_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd
                )
            except FileNotFoundError:
                return done
            except OSError as exc:
                if exc.errno != errno.ELOOP:
                    raise
                log.warning("%s is a symbolic link: not read, and replaced", self.path)
                return done
            with os.fdopen(fd, encoding="utf-8") as fh:
                lines = fh.read().splitlines()
            for stem, file in self._ok_records(lines):
                with contextlib.suppress(OSError, ClientError):
                    inside(self.folder, file)
                    if stat.S_ISREG(os.stat(file, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                        done[stem] = file
        return done

    @staticmethod
    def _ok_records(lines: list[str]) -> list[tuple[str, str]]:
        """``(stem, file)`` of each well-formed ``ok`` record."""
        found = []
        for line in lines:
            try:
                rec = _OK_LINE.decode(line)
            except msgspec.DecodeError:
                continue  # a line cut short by a kill, or not a record
            if rec.status == "ok" and rec.file is not None:
                found.append((rec.key, rec.file))
        return found

    def open(self) -> None:
        """Open the log for appending, once per job (blocking).

        A link planted at its name is replaced by a new log (its target untouched); later
        appends go through this descriptor, so a link planted meanwhile is never followed.

        Raises:
            ClientError: the name holds something other than a file (a FIFO, a device).
        """
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        flags |= os.O_NONBLOCK  # a planted FIFO must not block the open
        with _folder_fd(self.folder) as dir_fd:
            try:
                fd = os.open(RESULTS_FILE, flags, 0o666, dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno != errno.ELOOP:
                    raise
                os.unlink(RESULTS_FILE, dir_fd=dir_fd)
                fd = os.open(RESULTS_FILE, flags | os.O_EXCL, 0o666, dir_fd=dir_fd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ClientError(f"{self.path} is not a regular file")
        os.set_blocking(fd, True)
        self.close()
        self._fd = fd

    def close(self) -> None:
        """Close the log (``append`` opens it again)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def append(self, record: ResultRecord) -> None:
        """Append one record and fsync, so a kill never loses a finished item (blocking)."""
        if self._fd is None:
            self.open()
        assert self._fd is not None
        line = json.dumps(msgspec.structs.asdict(record), ensure_ascii=False)
        data = (line + "\n").encode("utf-8")
        while data:
            data = data[os.write(self._fd, data) :]
        os.fsync(self._fd)
