"""Batch input files: JSONL of ``{"custom_id", "method", "url", "body"}``, checked line by line.

``LineChecker`` is fed the upload chunk by chunk (on a worker thread, never the event
loop) and stops at the first bad line with its number, so a 200 MB upload is checked as
it arrives. Fed a stored file with ``keep=True``, it collects the requests a batch sends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from gpufleet import wire

#: The keys of one request line, as OpenAI's batch input defines them.
LINE_KEYS: Final = frozenset({"custom_id", "method", "url", "body"})
MAX_CUSTOM_ID: Final = 512
MAX_URL: Final = 2048
#: Distinct request URLs remembered per file (a batch uses one; more is a file no batch can run).
MAX_URLS: Final = 64


class LineError(ValueError):
    """A line of a batch input file that cannot be a request (``line`` is 1-based)."""

    def __init__(self, line: int, message: str, *, code: str = "invalid_request") -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.code = code


@dataclass(frozen=True, slots=True)
class Request:
    """One request of a batch."""

    line: int
    custom_id: str
    url: str
    body: dict[str, Any]


def check_line(number: int, raw: bytes, *, max_bytes: int) -> Request:
    """The request on line ``number``.

    Raises:
        LineError: not a JSON object of exactly ``custom_id``, ``method`` (POST), ``url``
            and ``body`` (an object, not a stream), or longer than ``max_bytes``.
    """
    if len(raw) > max_bytes:
        raise LineError(number, f"{len(raw)} bytes, more than a request may hold ({max_bytes})")
    try:
        data = wire.decode_json(raw)
    except ValueError as exc:
        raise LineError(number, f"not valid JSON ({exc})", code="invalid_json") from None
    if not isinstance(data, dict):
        raise LineError(number, "a request must be a JSON object")
    keys = set(data)
    if keys != LINE_KEYS:
        missing = sorted(LINE_KEYS - keys)
        extra = sorted(keys - LINE_KEYS)
        what = "; ".join(
            part
            for part in (
                f"missing {', '.join(missing)}" if missing else "",
                f"unexpected {', '.join(extra)}" if extra else "",
            )
            if part
        )
        raise LineError(number, f"a request has custom_id, method, url and body: {what}")
    custom_id = data["custom_id"]
    if not isinstance(custom_id, str) or not custom_id or len(custom_id) > MAX_CUSTOM_ID:
        raise LineError(number, f"custom_id must be a string of 1 to {MAX_CUSTOM_ID} characters")
    if data["method"] != "POST":
        raise LineError(number, f"method must be POST, got {data['method']!r}")
    url = data["url"]
    if (
        not isinstance(url, str)
        or not url.startswith("/")
        or len(url) > MAX_URL
        or not (url.isascii() and url.isprintable())
        or " " in url
    ):
        raise LineError(number, "url must be a path such as /v1/chat/completions")
    body = data["body"]
    if not isinstance(body, dict):
        raise LineError(number, "body must be a JSON object")
    if body.get("stream") is True:
        raise LineError(number, "streaming (body.stream true) is not supported in a batch")
    return Request(number, custom_id, url, body)


class LineChecker:
    """Checks a JSONL upload as its chunks arrive; ``finish`` checks the last line."""

    def __init__(self, *, max_lines: int, max_line_bytes: int, keep: bool = False) -> None:
        self.max_lines = max_lines
        self.max_line_bytes = max_line_bytes
        #: With ``keep``: every request, in order.
        self.requests: list[Request] | None = [] if keep else None
        #: Non-blank lines seen (requests).
        self.lines = 0
        #: Each URL used, with its first line.
        self.urls: dict[str, int] = {}
        self._number = 0
        self._rest = b""
        self._ids: set[str] = set()

    def feed(self, chunk: bytes) -> None:
        """Check every line ``chunk`` completes.

        Raises:
            LineError: the first bad line.
        """
        data = self._rest + chunk if self._rest else chunk
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                break
            self._line(data[start:end])
            start = end + 1
        self._rest = data[start:]
        if len(self._rest) > self.max_line_bytes:
            self._line(self._rest)  # raises: too long, whatever follows

    def finish(self) -> None:
        """Check the last line (one without a newline).

        Raises:
            LineError: it is bad, or the file holds no request.
        """
        if self._rest:
            self._line(self._rest)
            self._rest = b""
        if not self.lines:
            raise LineError(max(self._number, 1), "the file holds no request", code="empty_file")

    def _line(self, raw: bytes) -> None:
        self._number += 1
        if not raw.strip():
            return
        request = check_line(self._number, raw, max_bytes=self.max_line_bytes)
        self.lines += 1
        if self.lines > self.max_lines:
            raise LineError(
                self._number,
                f"more than {self.max_lines} requests in one file",
                code="too_many_requests",
            )
        if request.custom_id in self._ids:
            raise LineError(
                self._number,
                f"custom_id {request.custom_id!r} is used by an earlier line",
                code="duplicate_custom_id",
            )
        self._ids.add(request.custom_id)
        if request.url not in self.urls:
            if len(self.urls) >= MAX_URLS:
                raise LineError(
                    self._number, f"more than {MAX_URLS} different urls", code="invalid_url"
                )
            self.urls[request.url] = self._number
        if self.requests is not None:
            self.requests.append(request)
