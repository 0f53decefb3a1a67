"""The wire types encode to the JSON the processes always sent, and decode it back, checked."""

from __future__ import annotations

import json

import pytest

from gpufleet import wire
from gpufleet.errors import ModelNotFound, WorkerOverloaded


def test_an_error_body_leaves_out_what_it_does_not_have() -> None:
    body = wire.error_payload(wire.ErrorCode.BAD_REQUEST, "nope")
    assert json.loads(wire.encode(body)) == {"error": "BadRequest", "message": "nope"}
    full = wire.payload_from_exception(WorkerOverloaded("full", retry_after_s=2), request_id="r1")
    assert json.loads(wire.encode(full)) == {
        "error": "WorkerOverloaded",
        "message": "full",
        "retry_after_s": 2,
        "request_id": "r1",
    }
    assert wire.decode(wire.encode(full), wire.ErrorBody) == full


def test_an_unknown_code_still_decodes() -> None:
    body = wire.decode(b'{"error": "Teapot", "message": "short and stout"}', wire.ErrorBody)
    assert (body.error, body.code) == ("Teapot", None)


def test_openai_shape_keeps_param_and_code_even_when_null() -> None:
    shaped = wire.openai_error(wire.error_payload("NotFound", "no such path"), 404)
    assert json.loads(wire.encode(shaped)) == {
        "error": {
            "message": "no such path",
            "type": "invalid_request_error",
            "param": None,
            "code": "NotFound",
        }
    }
    ours = wire.payload_from_exception(ModelNotFound("no model x"), request_id="r")
    shaped = wire.openai_error(ours, 404)
    assert (shaped.error.code, shaped.error.param, shaped.error.request_id) == (
        "model_not_found",
        "model",
        "r",
    )
    assert wire.openai_error(wire.error_payload("ModelError", "boom"), 500).error.type == (
        "server_error"
    )


@pytest.mark.parametrize(
    ("body", "name"),
    [
        (b'{"error": "WorkerOverloaded", "message": "full"}', "WorkerOverloaded"),
        (b'{"error": {"message": "m", "type": "t", "param": null, "code": "X"}}', "X"),
        (b'{"error": {"message": "m", "type": "t", "param": null, "code": null}}', None),
        (b'{"status": "ready"}', None),
        (b"not json", None),
        (b"[" * 100_000, None),
        (b'{"error": ' * 5_000 + b"1" + b"}" * 5_000, None),
    ],
)
def test_error_name_of_reads_both_shapes_and_nothing_else(body: bytes, name: str | None) -> None:
    assert wire.error_name_of(body) == name


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b'{"status": 3}', b"[]", b'{"reason": "x"}', b"[" * 100_000],
)
def test_decode_refuses_what_is_not_the_type(body: bytes) -> None:
    with pytest.raises(wire.WireDecodeError):
        wire.decode(body, wire.HealthBody)
    assert issubclass(wire.WireDecodeError, ValueError)  # as decode_json's errors were


def test_health_bodies_say_only_what_applies() -> None:
    ready = wire.HealthBody(status=wire.WorkerState.READY)
    assert wire.encode(ready) == b'{"status":"ready"}'
    stalled = wire.HealthBody(status=wire.WorkerState.STALLED, reason="stuck 3s")
    assert json.loads(wire.encode(stalled)) == {"status": "stalled", "reason": "stuck 3s"}
    assert wire.stall_reason(wire.encode(stalled)) == "stuck 3s"
    assert wire.stall_reason(wire.encode(ready)) is None


def _view(**changes: object) -> dict[str, object]:
    view: dict[str, object] = {
        "id": "u1",
        "url": "http://127.0.0.1:1",
        "pool": "default",
        "state": "ready",
        "in_flight": 0,
        "served": 3,
        "errors": 0,
        "ejections": 0,
        "latency_ms": {"p50": 1.5, "p99": 2.0},
        "rate": 0.0,
        "weight": 1.0,
        "max_outstanding": 4,
        "first_byte_timeout_s": None,
        "busy_after_s": None,
        "waiting": 0,
        "suspect": False,
        "gpufleet_worker": True,
        "engine": None,
        "tokens": None,
        "engine_load": {"running": 1, "waiting": 2},
        "labels": {"gpu": "0"},
    }
    return view | changes


def test_an_upstream_view_round_trips_and_checks_its_state() -> None:
    raw = json.dumps(_view()).encode()
    view = wire.decode(raw, wire.UpstreamView)
    assert view.state is wire.UpstreamState.READY
    assert view.engine_load == wire.EngineLoad(running=1, waiting=2)
    assert json.loads(wire.encode(view)) == json.loads(raw)
    with pytest.raises(wire.WireDecodeError, match="state"):
        wire.decode(json.dumps(_view(state="sleeping")).encode(), wire.UpstreamView)
    with pytest.raises(wire.WireDecodeError, match="labels"):
        wire.decode(json.dumps(_view(labels={"gpu": 0})).encode(), wire.UpstreamView)


def test_an_add_request_sends_only_what_is_set() -> None:
    assert wire.encode(wire.AddUpstream(url="http://h:1")) == b'{"url":"http://h:1"}'
    body = wire.decode(b'{"url": "http://h:1", "weight": "2"}', wire.AddUpstream)
    assert (body.pool, body.weight, body.labels) == ("default", "2", None)
    with pytest.raises(wire.WireDecodeError):
        wire.decode(b'{"url": "http://h:1", "weight": true}', wire.AddUpstream)
