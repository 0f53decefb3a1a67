"""OpenAI's shapes where OpenAI's routes are served, checked with the ``openai`` client
against a real worker and a real router (issue 14): ``/v1/models``, the error object,
``model_not_found``."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import openai
import pytest

from gpufleet import wire
from gpufleet.testing import ServerProcess, free_port, run_router, run_worker
from tests.integration._models import spec
from tests.integration._openai import openai_client


@pytest.fixture(scope="module")
def embed() -> Iterator[ServerProcess]:
    with run_worker(spec("TinyEmbed")) as w:
        yield w


@pytest.fixture(scope="module")
def router(embed: ServerProcess) -> Iterator[ServerProcess]:
    with run_router([embed.url]) as r:
        yield r


def _client(url: str) -> openai.OpenAI:
    return openai_client(f"{url}/v1", timeout=10)


def _post(url: str, body: object) -> tuple[int, dict[str, object]]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.loads(exc.read())


@pytest.mark.parametrize("where", ["worker", "router"])
def test_models_list(where: str, embed: ServerProcess, router: ServerProcess) -> None:
    url = embed.url if where == "worker" else router.url
    with _client(url) as client:
        [model] = client.models.list().data
    assert model.id == "tiny-embed"
    assert model.object == "model"
    assert model.owned_by == "gpufleet"
    if where == "router":  # the router answers itself, saying which pool serves it
        assert model.model_extra == {"pools": ["default"]}


@pytest.mark.parametrize("where", ["worker", "router"])
def test_embeddings_and_a_model_not_served(
    where: str, embed: ServerProcess, router: ServerProcess
) -> None:
    with _client(embed.url if where == "worker" else router.url) as client:
        answer = client.embeddings.create(model="tiny-embed", input=["ab", "c"])
        assert [d.embedding[0] for d in answer.data] == [2.0, 1.0]
        with pytest.raises(openai.NotFoundError) as caught:
            client.embeddings.create(model="gpt-4o", input="x")
    error = caught.value
    assert error.code == "model_not_found"
    assert error.param == "model"
    assert error.type == "invalid_request_error"
    assert "'gpt-4o' does not exist here; this worker serves 'tiny-embed'" in error.message
    assert error.response.headers[wire.FAULT_HEADER] == wire.FAULT_REQUEST


def test_a_missing_model_field_is_the_workers_own(embed: ServerProcess) -> None:
    status, body = _post(f"{embed.url}/v1/embeddings", {"input": "abc"})
    assert status == 200, body
    assert body["model"] == "tiny-embed"


def test_worker_errors_on_v1_are_openai_errors(embed: ServerProcess) -> None:
    with _client(embed.url) as client, pytest.raises(openai.UnprocessableEntityError) as caught:
        client.embeddings.create(model="tiny-embed", input="x", dimensions=8)
    assert caught.value.body == {
        "message": '"dimensions" is not supported by this model',
        "type": "invalid_request_error",
        "param": None,
        "code": "Unprocessable",
    }
    with _client(embed.url) as client, pytest.raises(openai.NotFoundError) as wrong_kind:
        client.images.generate(prompt="a cat")
    assert wrong_kind.value.code == "NotServed"
    # Off /v1, the gpufleet shape stays.
    status, body = _post(f"{embed.url}/predict", {"inputs": []})
    assert (status, body["error"]) == (422, "Unprocessable")


def test_the_routers_own_errors_on_v1_are_openai_errors() -> None:
    nothing = f"http://127.0.0.1:{free_port()}"
    with run_router([nothing], ready=False) as router, _client(router.url) as client:
        with pytest.raises(openai.InternalServerError) as caught:
            client.embeddings.create(model="any", input="x")
        assert caught.value.status_code == 503
        body = caught.value.body
        assert isinstance(body, dict)
        assert body["type"] == "server_error"
        assert body["code"] == "NoHealthyBackend"
        assert caught.value.response.headers["Retry-After"] == "1"
        assert client.models.list().data == []  # no ready upstream: no model
        status, raw = _post(f"{router.url}/predict", {"input": "x"})
        assert (status, raw["error"]) == (503, "NoHealthyBackend")


def test_chat_model_not_found_and_found() -> None:
    with run_worker(spec("EchoChat")) as w, _client(w.url) as client:
        hello = [{"role": "user", "content": "hi"}]
        answer = client.chat.completions.create(model="echo-chat", messages=hello)  # type: ignore[arg-type]
        assert answer.choices[0].message.content == "echo: hi"
        with pytest.raises(openai.NotFoundError) as caught:
            client.chat.completions.create(model="gpt-4o", messages=hello)  # type: ignore[arg-type]
        assert caught.value.code == "model_not_found"
