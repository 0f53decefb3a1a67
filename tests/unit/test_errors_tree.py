"""The tree drawn in ``errors.py``'s docstring is the tree of classes, codes and statuses."""

from __future__ import annotations

import ast
import inspect
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from gpufleet import errors, wire
from gpufleet.errors import ErrorCode, GpufleetError, error_class

#: ``├── Name(Base, Other)   Code -> 404`` (the bases part only where there are several).
_LINE = re.compile(
    r"^(?P<indent>[ │├└─]*)(?P<name>\w+)(?:\((?P<bases>[\w, ]+)\))?"
    r"\s+(?P<code>\w+) -> (?P<status>\d{3})$"
)


@dataclass(frozen=True)
class Drawn:
    name: str
    parent: str | None
    bases: tuple[str, ...] | None
    code: str
    status: int


def _drawn() -> list[Drawn]:
    doc = errors.__doc__ or ""
    block = doc.split("::", 1)[1].split("\n\n", 2)[1]  # the indented block after "::"
    out: list[Drawn] = []
    stack: list[tuple[int, str]] = []  # (column of the name, name) of the open ancestors
    for raw in block.splitlines():
        line = raw[4:]  # the literal block's own indent
        m = _LINE.match(line)
        assert m is not None, f"cannot read this line of the drawn tree: {raw!r}"
        column = len(m["indent"])
        while stack and stack[-1][0] >= column:
            stack.pop()
        bases = tuple(b.strip() for b in m["bases"].split(",")) if m["bases"] else None
        parent = stack[-1][1] if stack else None
        out.append(Drawn(m["name"], parent, bases, m["code"], int(m["status"])))
        stack.append((column, m["name"]))
    return out


def _classes() -> dict[str, type[GpufleetError]]:
    return {
        name: cls
        for name, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, GpufleetError) and cls.__module__ == errors.__name__
    }


def test_every_class_is_drawn_and_every_drawn_class_exists() -> None:
    assert {d.name for d in _drawn()} == set(_classes())


@pytest.mark.parametrize("drawn", _drawn(), ids=lambda d: d.name)
def test_a_drawn_class_has_its_parent_code_and_status(drawn: Drawn) -> None:
    cls = _classes()[drawn.name]
    if drawn.parent is None:
        assert cls.__bases__ == (Exception,)
    else:
        assert cls.__bases__[0] is _classes()[drawn.parent]
    if drawn.bases is not None:
        assert tuple(b.__name__ for b in cls.__bases__) == drawn.bases
    else:
        assert len(cls.__bases__) == 1, f"{cls.__name__} has more bases than drawn"
    assert cls.code == drawn.code
    assert cls.http_status == drawn.status


def test_code_and_class_map_both_ways() -> None:
    classes = _classes().values()
    assert {cls.code for cls in classes} == set(ErrorCode)
    for cls in classes:
        assert error_class(cls.code) is cls
        assert error_class(str(cls.code)) is cls
    assert error_class("NoSuchError") is None


def test_codes_are_the_class_names_so_the_wire_is_unchanged() -> None:
    # The wire spoke type(exc).__name__ before ErrorCode: the values must stay those names.
    for cls in _classes().values():
        assert cls.code.value == cls.__name__


def test_the_wire_payload_carries_the_code() -> None:
    exc = errors.WorkerOverloaded("queue full", retry_after_s=2.0)
    body = wire.encode(wire.payload_from_exception(exc))
    assert json.loads(body) == {
        "error": "WorkerOverloaded",
        "message": "queue full",
        "retry_after_s": 2.0,
    }
    decoded = wire.decode(body, wire.ErrorBody)
    assert decoded.code is ErrorCode.WORKER_OVERLOADED
    assert error_class(decoded.error) is errors.WorkerOverloaded


def test_requests_refused_by_the_router_are_not_worker_errors() -> None:
    for cls in (errors.RequestTimeout, errors.PayloadTooLarge, errors.TooManyInputs):
        assert not issubclass(cls, errors.WorkerError)
        assert issubclass(cls, errors.BadRequest)


def test_classes_kept_where_they_were_are_the_tree_s() -> None:
    # Moved into errors.py; their old homes still export the same class.
    from gpufleet.fleet.devices import DiscoveryUnavailable
    from gpufleet.router.http1 import Lost

    assert DiscoveryUnavailable is errors.DiscoveryUnavailable
    assert issubclass(Lost, errors.UpstreamError)


def test_no_error_code_is_spelled_as_a_string_literal_in_the_package() -> None:
    # A code compared as a literal would silently drift from the enum (issue 15).
    package = Path(errors.__file__).parent
    codes = {code.value for code in ErrorCode}
    found = []
    for path in package.rglob("*.py"):
        if path == Path(errors.__file__):
            continue
        tree = ast.parse(path.read_text())
        exported: set[int] = set()  # string nodes inside __all__ = [...] name classes, fine
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
            ):
                exported |= {id(n) for n in ast.walk(node.value)}
        found += [
            f"{path.relative_to(package)}:{node.lineno} {node.value!r}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and node.value in codes and id(node) not in exported
        ]
    assert found == []
