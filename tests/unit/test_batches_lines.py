"""Batch input lines checked with their numbers; output lines in OpenAI's shape."""

from __future__ import annotations

import json

import pytest

from gpufleet.batches.jsonl import LineChecker, LineError
from gpufleet.batches.output import result_line


def _line(custom_id: str, url: str = "/predict", **body: object) -> bytes:
    req = {"custom_id": custom_id, "method": "POST", "url": url, "body": body or {"input": "x"}}
    return json.dumps(req).encode()


def _check(data: bytes, *, chunk: int = 7, max_lines: int = 100) -> LineChecker:
    checker = LineChecker(max_lines=max_lines, max_line_bytes=1000, keep=True)
    for i in range(0, len(data), chunk):
        checker.feed(data[i : i + chunk])
    checker.finish()
    return checker


def test_good_lines_split_anywhere_are_read_in_order() -> None:
    data = b"\n".join([_line("a"), b"", _line("b", "/v1/embeddings"), _line("c")])
    for chunk in (1, 5, 64, len(data)):
        checker = _check(data, chunk=chunk)
        assert checker.requests is not None
        assert [(r.line, r.custom_id) for r in checker.requests] == [(1, "a"), (3, "b"), (4, "c")]
        assert checker.lines == 3
        assert checker.urls == {"/predict": 1, "/v1/embeddings": 3}


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"custom_id": "x", "method": "POST", "url": "/predict"}', "missing body"),
        (b'{"custom_id": "x", "method": "GET", "url": "/p", "body": {}}', "method must be POST"),
        (b'{"custom_id": "", "method": "POST", "url": "/p", "body": {}}', "custom_id"),
        (b'{"custom_id": "x", "method": "POST", "url": "p", "body": {}}', "url must be a path"),
        (b'{"custom_id": "x", "method": "POST", "url": "/p", "body": 3}', "body must be"),
        (_line("x", stream=True), "streaming"),
        (_line("a"), "used by an earlier line"),
        (b"[" * 200 + b"]" * 200, "not valid JSON"),
        (b"x" * 2000, "more than a request may hold"),
    ],
)
def test_a_bad_line_is_named_by_its_number(bad: bytes, words: str) -> None:
    data = b"\n".join([_line("a"), b"   ", bad, _line("z")])
    with pytest.raises(LineError, match=words) as info:
        _check(data)
    assert info.value.line == 3
    assert str(info.value).startswith("line 3: ")


def test_too_many_requests_and_an_empty_file() -> None:
    data = b"\n".join(_line(str(i)).rstrip() for i in range(4))
    with pytest.raises(LineError, match="more than 3 requests") as info:
        _check(data, max_lines=3)
    assert info.value.line == 4
    with pytest.raises(LineError, match="no request"):
        _check(b"\n\n")


def test_result_lines_have_openai_shape() -> None:
    ok = json.loads(result_line("r1", "c1", status=200, request_id="q", body=b'{\n "a": 1}'))
    assert ok == {
        "id": "r1",
        "custom_id": "c1",
        "response": {"status_code": 200, "request_id": "q", "body": {"a": 1}},
        "error": None,
    }
    text = json.loads(result_line("r2", "c2", status=502, request_id="q", body=b"<html>"))
    assert text["response"]["body"] == "<html>"
    failed = json.loads(result_line("r3", "c3", error={"code": "x", "message": "m"}))
    assert failed["response"] is None
    assert failed["error"] == {"code": "x", "message": "m"}
    assert b"\n" not in result_line("r", "c", status=200, body=b'{"a":\n"\\n"}')
