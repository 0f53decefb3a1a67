"""Markers from the test's folder (the gpu tests skip themselves without a device); the
longest test files first; every test fails if it leaks a process, a temporary file or an
open socket."""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

_TESTS = Path(__file__).parent


# Seconds each test took (setup, call and teardown) when it last ran, kept in pytest's cache.
_DURATIONS = "gpufleet/durations"
# What a file not timed yet is guessed to take per test: the tests that start processes
# take seconds, the pure ones milliseconds.
_GUESS_S = {"integration": 3.0, "gpu": 3.0, "unit": 0.05}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    has_gpu = shutil.which("nvidia-smi") is not None
    for item in items:
        parts = Path(str(item.fspath)).relative_to(_TESTS).parts
        if parts and parts[0] in {"unit", "integration", "gpu"}:
            item.add_marker(getattr(pytest.mark, parts[0]))
        if parts and parts[0] == "gpu" and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="needs a GPU"))
    _longest_files_first(config, items)


def _longest_files_first(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Order the files by how long their tests took last time, longest first, each
    file's tests in their own order (module fixtures are set up once, and a test that
    must run last in its file still does).

    ``make test`` hands out whole files (``--dist loadfile``): started last, a file of a
    minute would run alone at the end while the other test processes sit idle.
    """
    cache = getattr(config, "cache", None)  # None with -p no:cacheprovider
    known: dict[str, float] = cache.get(_DURATIONS, {}) if cache else {}
    totals: dict[Path, float] = {}
    for item in items:
        folder = Path(str(item.fspath)).relative_to(_TESTS).parts[0]
        guess = _GUESS_S.get(folder, 0.05)
        totals[item.path] = totals.get(item.path, 0.0) + known.get(item.nodeid, guess)
    # sort() is stable: a file's tests keep their order.
    items.sort(key=lambda item: -totals[item.path])


_TOOK: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _TOOK[report.nodeid] = _TOOK.get(report.nodeid, 0.0) + report.duration


def pytest_sessionfinish(session: pytest.Session) -> None:
    cache = getattr(session.config, "cache", None)
    # With xdist the controller sees every report; its workers keep nothing.
    if cache is None or hasattr(session.config, "workerinput") or not _TOOK:
        return
    known: dict[str, float] = cache.get(_DURATIONS, {})
    known.update({nodeid: round(s, 3) for nodeid, s in _TOOK.items()})
    cache.set(_DURATIONS, known)


@pytest.fixture(autouse=True)
def _close_openai_clients(_no_leaks: None) -> Iterator[None]:
    """``openai`` clients a test made are closed when it ends (no socket left to the GC)."""
    yield
    made = sys.modules.get("tests.integration._openai")  # only a test that made one imports it
    if made is not None:
        made.close_all()


def _children() -> dict[int, str]:
    """This process's live children (zombies left out), pid -> command name."""
    me = os.getpid()
    found: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name, _, rest = stat.rpartition(")")
        fields = rest.split()
        if int(fields[1]) == me and fields[0] != "Z":
            found[int(entry)] = name.partition("(")[2]
    return found


def _channels() -> set[str]:
    """The sockets and pipes this process holds open."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(("socket:", "pipe:")):
                found.add(target)
    return found


def _temporaries() -> set[str]:
    return {n for n in os.listdir(_TMP) if not n.startswith("pytest-")}


# Each test process gets a temporary folder of its own, so that what a test leaves in it
# is that test's (pytest-xdist runs several processes side by side).
_TMP = tempfile.mkdtemp(prefix=f"gpufleet-tests-{os.getpid()}-")
os.chmod(_TMP, 0o711)  # the PostgreSQL test server runs as nobody in a folder inside
tempfile.tempdir = _TMP

# One compute thread per process the tests start (workers inherit it): several test
# processes side by side, each starting torch workers that spin a thread per core, made
# one MiniLM embedding take 0.6 s on two busy cores instead of 0.03 s.
os.environ.setdefault("OMP_NUM_THREADS", "1")


_SNAPSHOT = pytest.StashKey[tuple[set[int], set[str], set[str]]]()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    # Taken when the test body starts: fixtures of a wider scope that a test starts lazily
    # (getfixturevalue) are up by then and are not the test's to close.
    item.stash[_SNAPSHOT] = (set(_children()), _channels(), _temporaries())


@pytest.fixture(autouse=True)
def _no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test whose body leaves a child process, a temporary file or folder, or an
    open socket or pipe behind once its fixtures are torn down (what outlives it is given
    5 s and a garbage collection to go away). Set up first, so torn down last."""
    yield
    snapshot = request.node.stash.get(_SNAPSHOT, None)
    if snapshot is None:  # the body never ran (a failed setup or a skip)
        return
    children, channels, temporaries = snapshot
    end = time.monotonic() + 5.0
    while True:
        gc.collect()
        left = {
            "processes": sorted(
                f"{pid} {name}" for pid, name in _children().items() if pid not in children
            ),
            "temporary files": sorted(_temporaries() - temporaries),
            "sockets or pipes": sorted(_channels() - channels),
        }
        if not any(left.values()) or time.monotonic() > end:
            break
        time.sleep(0.1)
    leaked = {what: items for what, items in left.items() if items}
    assert not leaked, f"the test left behind: {leaked}"


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_TMP, ignore_errors=True)
