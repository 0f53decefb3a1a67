"""The public names of ``gpufleet`` are exactly those in ``__all__``, and all resolve."""

from __future__ import annotations

import subprocess
import sys

import pytest

import gpufleet


def test_all_names_resolve() -> None:
    for name in gpufleet.__all__:
        assert getattr(gpufleet, name) is not None, name


def test_public_namespace_matches_all() -> None:
    public = {n for n in dir(gpufleet) if not n.startswith("_")}
    # Sub-packages appear as attributes once imported; they are not part of the API list.
    modules = {n for n in public if type(getattr(gpufleet, n)).__name__ == "module"}
    assert public - modules == set(gpufleet.__all__) - {"__version__"}


def test_lazy_names_are_listed_before_first_use() -> None:
    # dir() must show the lazy names (Client) before anything imported them.
    code = (
        "import sys, gpufleet; "
        "names = {n for n in dir(gpufleet) if not n.startswith('_')}; "
        "assert set(gpufleet.__all__) - {'__version__'} <= names, names; "
        "assert 'aiohttp' not in sys.modules, 'import gpufleet pulled in aiohttp'; "
        "assert gpufleet.Client.__module__ == 'gpufleet.client.client'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_attribute_raises() -> None:
    with pytest.raises(AttributeError, match="NoSuchThing"):
        _ = gpufleet.NoSuchThing


def test_model_contract_defaults() -> None:
    class Echo(gpufleet.Model):
        def predict(self, batch: list[object]) -> list[object]:
            return batch

    m = Echo()
    m.setup("cpu")
    assert m.predict([1, 2]) == [1, 2]
    assert list(m.predict_stream(3)) == [3]
    assert m.decode({"a": 1}) == {"a": 1}
    assert m.kind == "generic"
    assert not Echo.supports_streaming()
