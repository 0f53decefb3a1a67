"""Markers from the test's folder; the gpu tests skip themselves without a device."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

_TESTS = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    has_gpu = shutil.which("nvidia-smi") is not None
    for item in items:
        parts = Path(str(item.fspath)).relative_to(_TESTS).parts
        if parts and parts[0] in {"unit", "integration", "gpu"}:
            item.add_marker(getattr(pytest.mark, parts[0]))
        if parts and parts[0] == "gpu" and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="needs a GPU"))


@pytest.fixture(autouse=True)
def _close_openai_clients() -> Iterator[None]:
    """``openai`` clients a test made are closed when it ends (no socket left to the GC)."""
    yield
    from tests.integration._openai import close_all

    close_all()
