"""Built-in models and the model loader, in-process (no HTTP)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from gpufleet.errors import BadRequest, ConfigError, ModelError
from gpufleet.models import BUILTIN_MODELS, resolve_model_class
from gpufleet.models.image_demo import ImageDemo, ImageRequest
from gpufleet.models.synthetic import Synthetic
from gpufleet.worker.runner import ItemFailed, Runner, is_out_of_memory


def test_builtins_resolve_without_loading_weights() -> None:
    assert resolve_model_class("synthetic") is Synthetic
    assert resolve_model_class("image-demo") is ImageDemo
    assert set(BUILTIN_MODELS) == {"minilm", "synthetic", "image-demo"}
    with pytest.raises(ConfigError, match="unknown model"):
        resolve_model_class("nope")


def test_model_from_a_file(tmp_path: Path) -> None:
    f = tmp_path / "mine.py"
    f.write_text(
        "from gpufleet import Model\n"
        "class Twice(Model):\n"
        "    def predict(self, batch):\n"
        "        return [x * 2 for x in batch]\n"
    )
    cls = resolve_model_class(f"{f}:Twice")
    assert cls().predict([1, 2]) == [2, 4]


def test_synthetic_echoes_with_its_batch_size() -> None:
    m = Synthetic(base_ms=0, per_item_ms=0)
    m.setup("cpu")
    out = m.predict(["a", "b"])
    assert [o["echo"] for o in out] == ["a", "b"]
    assert {o["batch_size"] for o in out} == {2}
    assert out[0]["device"] == "cpu"


def test_synthetic_faults_and_bad_args() -> None:
    m = Synthetic(base_ms=0, per_item_ms=0, fail_on="bad", oom_above="2")
    with pytest.raises(RuntimeError, match="synthetic failure"):
        m.predict(["ok", "bad"])
    with pytest.raises(RuntimeError) as exc:
        m.predict([1, 2, 3])
    assert is_out_of_memory(exc.value)
    with pytest.raises(ConfigError, match="base_ms"):
        Synthetic(base_ms="fast")
    with pytest.raises(ConfigError, match="speed"):
        Synthetic(speed=0)
    assert Synthetic(max_batch_size="4").max_batch_size == 4


async def test_runner_splits_on_oom_and_reports_the_new_size() -> None:
    runner = Runner("synthetic", {"base_ms": "0", "per_item_ms": "0", "oom_above": "3"}, "cpu")
    seen: list[int] = []
    runner.on_oom = seen.append
    info = await runner.load()
    assert info.name == "synthetic"
    out = await runner.predict(list(range(10)))
    assert [o["echo"] for o in out] == list(range(10))
    assert max(o["batch_size"] for o in out) <= 3
    assert min(seen) <= 3
    runner.shutdown(wait=True)


async def test_runner_wraps_model_errors_and_wrong_output_counts(tmp_path: Path) -> None:
    f = tmp_path / "short.py"
    f.write_text(
        "from gpufleet import Model\n"
        "class Short(Model):\n"
        "    def predict(self, batch):\n"
        "        return batch[:-1]\n"
    )
    runner = Runner(f"{f}:Short", {}, "cpu", isolate_failures=False)
    await runner.load()
    with pytest.raises(ModelError, match="1 outputs for a batch of 2"):
        await runner.predict([1, 2])
    runner.shutdown(wait=True)
    # Isolating failures, the batch is halved: each lone item fails by itself.
    runner = Runner(f"{f}:Short", {}, "cpu")
    await runner.load()
    outs = await runner.predict([1, 2])
    assert [type(o) for o in outs] == [ItemFailed, ItemFailed]
    assert all("0 outputs for a batch of 1" in o.message for o in outs)
    assert runner.isolation_splits == 1
    runner.shutdown(wait=True)
    bad = Runner("synthetic", {"colour": "red"}, "cpu")
    with pytest.raises(ConfigError, match="colour"):
        await bad.load()
    bad.shutdown(wait=True)


def test_image_demo_is_deterministic_png() -> None:
    m = ImageDemo()
    req = m.decode({"input": "a desert at dawn", "seed": 5, "parameters": {"width": 96}})
    assert req == ImageRequest("a desert at dawn", 5, 96, 256)
    a, b = m.predict([req, req])
    assert a == b
    assert Image.open(io.BytesIO(a)).size == (96, 256)
    (c,) = m.predict([m.decode({"input": "a desert at dawn", "seed": 6})])
    assert c != a


@pytest.mark.parametrize(
    "body",
    [
        {"input": ""},
        {"input": 3},
        {"input": "x", "seed": "1"},
        {"input": "x", "parameters": {"width": 5000}},
        {"input": "x", "parameters": {"steps": 30}},
    ],
)
def test_image_demo_rejects_bad_items(body: dict[str, object]) -> None:
    with pytest.raises(BadRequest):
        ImageDemo().decode(body)


def test_builtin_models_answer_a_wrong_shape_422_as_the_readme_says() -> None:
    from gpufleet.errors import Unprocessable
    from gpufleet.models.minilm import MiniLM

    for model, body in (
        (MiniLM(), {"input": 5}),
        (MiniLM(), {"input": "x", "extra": 1}),
        (ImageDemo(), {"input": 42}),
        (ImageDemo(), {"input": "sea", "parameters": {"depth": 3}}),
    ):
        with pytest.raises(Unprocessable) as caught:
            model.decode(body)
        assert caught.value.http_status == 422
