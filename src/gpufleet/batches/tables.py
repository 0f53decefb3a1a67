"""Records as table rows and back: the part of a ``BatchStore`` that is the same whatever
database holds the tables (used as ``tables.batch_row(record)``, ``tables.file_record(row)``).

Both stores keep a file in the columns ``FILE_COLUMNS`` and a batch in ``BATCH_COLUMNS``
(what is searched, sorted or counted on) with every other field as one JSON ``doc``;
they select the columns in these orders, so a row is a tuple (or ``sqlite3.Row``) with
its values where these functions look for them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, TypeVar

from gpufleet.batches.records import BatchRecord, FileRecord, ResultRow

T = TypeVar("T")

#: A row as a database driver hands it over (``sqlite3.Row`` or a psycopg tuple).
Row = Sequence[Any]

#: A file's columns, in the order rows are selected and inserted.
FILE_COLUMNS: Final = ("id", "purpose", "created_at", "bytes", "doc")
#: A batch's columns, in the order rows are selected and inserted (the rest are in ``doc``).
BATCH_COLUMNS: Final = (
    "id",
    "status",
    "input_file_id",
    "created_at",
    "completed",
    "failed",
    "doc",
)
#: ``SELECT`` of a file's and of a batch's columns (``… FROM <table> WHERE …`` follows).
FILE_SELECT: Final = f"SELECT {', '.join(FILE_COLUMNS)}"
BATCH_SELECT: Final = f"SELECT {', '.join(BATCH_COLUMNS)}"
#: The columns ``batch_changes`` sets on an update, in its order.
BATCH_UPDATED: Final = ("status", "completed", "failed", "doc")
#: A result's columns, in the order rows are selected.
RESULT_COLUMNS: Final = ("custom_id", "line", "ok", "doc")

_FILE_DOC: Final = ("filename", "lines", "urls", "expires_at")
_BATCH_DOC: Final = tuple(
    name for name in BatchRecord.__dataclass_fields__ if name not in BATCH_COLUMNS
)


def file_row(record: FileRecord) -> tuple[object, ...]:
    """``record``'s values for ``FILE_COLUMNS``."""
    doc = {name: getattr(record, name) for name in _FILE_DOC}
    return (record.id, record.purpose, record.created_at, record.bytes, json.dumps(doc))


def file_record(row: Row) -> FileRecord:
    """The file in a row of ``FILE_COLUMNS``."""
    file_id, purpose, created_at, size, doc = row
    return FileRecord(
        id=file_id, purpose=purpose, bytes=int(size), created_at=int(created_at), **json.loads(doc)
    )


def batch_row(record: BatchRecord) -> tuple[object, ...]:
    """``record``'s values for ``BATCH_COLUMNS``."""
    return (
        record.id,
        record.status,
        record.input_file_id,
        record.created_at,
        *batch_changes(record)[1:],
    )


def batch_changes(record: BatchRecord) -> tuple[object, ...]:
    """``record``'s values for ``BATCH_UPDATED``: what an update may change."""
    doc = {name: getattr(record, name) for name in _BATCH_DOC}
    return (record.status, record.completed, record.failed, json.dumps(doc))


def batch_record(row: Row) -> BatchRecord:
    """The batch in a row of ``BATCH_COLUMNS``."""
    batch_id, status, input_file_id, created_at, completed, failed, doc = row
    return BatchRecord(
        id=batch_id,
        status=status,
        input_file_id=input_file_id,
        created_at=int(created_at),
        completed=int(completed),
        failed=int(failed),
        **json.loads(doc),
    )


def result_row(row: Row) -> ResultRow:
    """The result in a row of ``RESULT_COLUMNS``."""
    custom_id, line, ok, doc = row
    return ResultRow(custom_id, int(line), bool(ok), bytes(doc))


def changed(record: BatchRecord, fields: Mapping[str, object]) -> BatchRecord:
    """``record`` with ``fields`` set (in place: the record was just read for this)."""
    for name, value in fields.items():
        setattr(record, name, value)
    return record


def page_query(
    select: str,
    table: str,
    mark: str,
    *,
    limit: int,
    after: str | None,
    purpose: str | None = None,
) -> tuple[str, tuple[object, ...]]:
    """The query (with its parameter ``mark``: ``?`` or ``%s``) and arguments of a page of
    ``table``, newest first, after the row whose id is ``after``; ``limit + 1`` rows are
    asked for, so that ``page`` can tell whether more follow."""
    sql = f"{select} FROM {table} WHERE 1 = 1"
    args: list[object] = []
    if purpose is not None:
        sql += f" AND purpose = {mark}"
        args.append(purpose)
    if after is not None:
        sql += f" AND seq < coalesce((SELECT seq FROM {table} WHERE id = {mark}), -1)"
        args.append(after)
    return f"{sql} ORDER BY seq DESC LIMIT {mark}", (*args, limit + 1)


def page(rows: Sequence[Row], limit: int, decode: Callable[[Row], T]) -> tuple[list[T], bool]:
    """The first ``limit`` of ``rows`` (``limit + 1`` were asked for) decoded; and whether
    more follow."""
    return [decode(r) for r in rows[:limit]], len(rows) > limit


__all__ = [
    "BATCH_COLUMNS",
    "BATCH_SELECT",
    "BATCH_UPDATED",
    "FILE_COLUMNS",
    "FILE_SELECT",
    "RESULT_COLUMNS",
    "Row",
    "batch_changes",
    "batch_record",
    "batch_row",
    "changed",
    "file_record",
    "file_row",
    "page",
    "page_query",
    "result_row",
]
