"""Prompts files (text and JSONL), per-item seeds, and request bodies per route."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from gpufleet.client._payload import build_body, decode_reply
from gpufleet.client._transport import Reply, ServerBusy, check, json_reply
from gpufleet.client.items import Item, as_items, read_items
from gpufleet.errors import ConfigError, RequestFailed


def test_text_file_ids_are_line_numbers(tmp_path: Path) -> None:
    f = tmp_path / "p.txt"
    f.write_text("a cat\n\n# comment\nhttps://example.com/x.png\n")
    items = read_items(f)
    assert [(i.id, i.input) for i in items] == [
        ("000001", "a cat"),
        ("000004", "https://example.com/x.png"),
    ]


def test_jsonl_file(tmp_path: Path) -> None:
    f = tmp_path / "p.jsonl"
    rows = [
        {"id": "x", "input": "a", "seed": 3, "parameters": {"steps": 2}},
        {"input": {"text": "b"}},
    ]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    items = read_items(f)
    assert items[0] == Item(input="a", id="x", seed=3, parameters={"steps": 2})
    assert items[1] == Item(input={"text": "b"}, id="000002")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"id": "a"}', "missing 'input'"),
        ('{"input": 1, "prompt": 2}', "unknown key"),
        ('{"input": 1, "seed": "x"}', "'seed' must be an integer"),
        ('{"input": 1, "parameters": []}', "'parameters' must be an object"),
        ('{"input": 1', "not valid JSON"),
        ("[1]", "must be a JSON object"),
    ],
)
def test_bad_jsonl_names_the_line(tmp_path: Path, line: str, message: str) -> None:
    f = tmp_path / "p.jsonl"
    f.write_text('{"input": "ok"}\n' + line + "\n")
    with pytest.raises(ConfigError, match=message) as info:
        read_items(f)
    assert "p.jsonl:2" in str(info.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read prompts file"):
        read_items(tmp_path / "nope.txt")


def test_seed_plus_index_unless_the_item_has_its_own() -> None:
    items = as_items(["a", Item("b", seed=100), Item("c", id="c")], seed=42)
    assert [(i.id, i.seed) for i in items] == [("0", 42), ("1", 100), ("c", 44)]
    assert [i.seed for i in as_items(["a", "b"], seed=None)] == [None, None]


def test_bodies_per_route() -> None:
    item = Item("a cat", id="1", seed=7, parameters={"steps": 4})
    assert build_body("/predict", item) == {"input": "a cat", "seed": 7, "parameters": {"steps": 4}}
    assert build_body("/predict", Item("x")) == {"input": "x"}
    assert build_body("/v1/images/generations", item) == {
        "prompt": "a cat",
        "n": 1,
        "response_format": "b64_json",
        "seed": 7,
        "steps": 4,
    }
    assert build_body("/v1/embeddings", item) == {"input": "a cat", "steps": 4}


def test_decode_replies() -> None:
    png = b"\x89PNG\r\n"
    b64 = base64.b64encode(png).decode()
    binary = {"output": b64, "output_encoding": "base64", "content_type": "image/png"}
    assert decode_reply("/predict", json_reply(200, binary)) == (png, "image/png")
    assert decode_reply("/predict", json_reply(200, {"output": [1, 2]})) == (
        [1, 2],
        "application/json",
    )
    raw = Reply(200, png, {"Content-Type": "image/png"})
    assert decode_reply("/predict", raw) == (png, "image/png")
    openai = json_reply(200, {"data": [{"b64_json": b64}]})
    assert decode_reply("/v1/images/generations", openai) == (png, "image/png")
    with pytest.raises(RequestFailed) as info:
        decode_reply("/predict", Reply(200, b"<html>", {"Content-Type": "application/json"}))
    assert info.value.retryable


@pytest.mark.parametrize(
    ("status", "retryable"),
    [(500, True), (502, True), (503, True), (429, True), (408, True), (400, False), (422, False)],
)
def test_check_classifies_statuses(status: int, retryable: bool) -> None:
    reply = json_reply(status, {"error": "BadRequest", "message": "no good"})
    with pytest.raises(RequestFailed) as info:
        check(reply, "POST u")
    assert info.value.status == status
    assert info.value.retryable is retryable
    assert "BadRequest: no good" in str(info.value)


def test_busy_is_told_apart_from_down() -> None:
    full = {"error": "WorkerOverloaded", "message": "full", "retry_after_s": 1.0}
    with pytest.raises(ServerBusy):
        check(json_reply(503, full), "POST u")
    with pytest.raises(ServerBusy):
        check(json_reply(429, {}), "POST u")
    down = {"error": "NoHealthyBackend", "message": "none ready", "retry_after_s": 1.0}
    with pytest.raises(RequestFailed) as info:
        check(json_reply(503, down), "POST u")
    assert not isinstance(info.value, ServerBusy)
    with pytest.raises(RequestFailed) as info:
        check(json_reply(503, {"error": "x"}), "POST u")  # no Retry-After: not busy
    assert not isinstance(info.value, ServerBusy)


def test_check_reads_retry_after() -> None:
    body = {"error": "WorkerOverloaded", "message": "full", "retry_after_s": 0.5}
    with pytest.raises(RequestFailed) as info:
        check(json_reply(503, body), "POST u")
    assert info.value.retry_after_s == 0.5
    with pytest.raises(RequestFailed) as info:
        check(json_reply(429, {}, {"Retry-After": "3"}), "POST u")
    assert info.value.retry_after_s == 3.0
    assert check(json_reply(200, {}), "POST u").status == 200
