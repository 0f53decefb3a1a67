"""Where a job's outputs go: safe file names, atomic writes, and the resume record.

No item id can name a file outside the output folder: names keep only ``[A-Za-z0-9._-]``,
never start with a dot, are capped in length (with a hash of the id so long ids stay
distinct), and are made unique (case-insensitively) in the order items appear, so the same
prompts file always maps to the same names. Every write is a temporary file in the same
folder, flushed to disk, then renamed over the final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import unicodedata
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gpufleet.errors import ClientError

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
    """``folder / name``, refusing any name that would resolve outside ``folder``.

    Raises:
        ClientError: the name escapes the folder (a bug, since names are sanitised).
    """
    root = folder.resolve()
    target = (root / name).resolve()
    if target.parent != root:
        raise ClientError(f"refusing to write {name!r} outside {root}")
    return target


def write_atomic(folder: Path, name: str, data: bytes) -> Path:
    """Write ``data`` to ``folder/name`` via a temporary file and a rename (blocking)."""
    target = inside(folder, name)
    tmp = target.with_name(f".{target.name}.{os.getpid()}{TMP_SUFFIX}")
    try:
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return target


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


class ResultsLog:
    """``results.jsonl``: one line per finished item, appended and flushed to disk."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / RESULTS_FILE

    def done(self) -> dict[str, str]:
        """``{stem: file}`` of items recorded ``ok`` whose file still exists (blocking)."""
        done: dict[str, str] = {}
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return done
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line cut short by a kill
            if not isinstance(rec, dict):
                continue
            stem, file = rec.get("key"), rec.get("file")
            if not isinstance(stem, str) or not isinstance(file, str):
                continue
            if rec.get("status") != "ok":
                continue
            try:
                exists = inside(self.path.parent, file).is_file()
            except ClientError:
                exists = False
            if exists:
                done[stem] = file
        return done

    def append(self, record: dict[str, Any]) -> None:
        """Append one record and fsync, so a kill never loses a finished item (blocking)."""
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
