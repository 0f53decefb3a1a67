"""The public names of ``gpufleet`` are exactly those in ``__all__``, and all resolve."""

from __future__ import annotations

import gpufleet


def test_all_names_resolve() -> None:
    for name in gpufleet.__all__:
        assert getattr(gpufleet, name) is not None, name


def test_public_namespace_matches_all() -> None:
    public = {n for n in dir(gpufleet) if not n.startswith("_")}
    # Sub-packages appear as attributes once imported; they are not part of the API list.
    modules = {n for n in public if type(getattr(gpufleet, n)).__name__ == "module"}
    assert public - modules == set(gpufleet.__all__) - {"__version__"}


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
