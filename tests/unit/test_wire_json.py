"""JSON from a peer is decoded with bounded nesting (never a RecursionError)."""

from __future__ import annotations

import json

import pytest

from gpufleet import wire


def test_shallow_json_decodes() -> None:
    body = json.dumps({"inputs": [[1.0] * 384 for _ in range(100)], "x": {"y": [{}]}})
    assert wire.decode_json(body.encode())["x"] == {"y": [{}]}
    nested = "[" * wire.MAX_JSON_DEPTH + "]" * wire.MAX_JSON_DEPTH
    assert wire.decode_json(nested) is not None


@pytest.mark.parametrize("depth", [wire.MAX_JSON_DEPTH + 1, 5_000, 200_000])
def test_too_deep_is_a_value_error(depth: int) -> None:
    for raw in ("[" * depth + "]" * depth, '{"a":' * depth + "1" + "}" * depth, "[" * depth):
        with pytest.raises(wire.JSONTooDeep if raw.endswith(("]", "}")) else ValueError):
            wire.decode_json(raw.encode())


def test_helpers_that_read_a_peers_body_survive_deep_json() -> None:
    deep = b"[" * 100_000
    assert not wire.is_overloaded_body(deep)
    assert wire.stall_reason(deep) is None


def test_prefix_routing_reads_no_prompt_from_deep_json() -> None:
    from gpufleet.router.prefix import prompt_text

    deep = b'{"x": ' + b"[" * 200_000 + b"]" * 200_000 + b', "prompt": "hi"}'
    assert prompt_text("/v1/completions", deep) is None
