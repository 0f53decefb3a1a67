"""What ``POST /v1/batches`` asks for, checked before a batch is made of it.

The body is a JSON object of at most ``MAX_JSON_BODY`` bytes: ``input_file_id``, an
``endpoint`` the fleet serves (any path but the router's own), a ``completion_window``
such as OpenAI's ``24h`` (1h to 720h) and OpenAI-bounded ``metadata``. The input file
must be a batch input whose every line asks for that endpoint, within the batch's line
limit. Each refusal is OpenAI-shaped and names the field at fault.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web

from gpufleet import wire
from gpufleet.batches.records import PURPOSE_BATCH, FileRecord
from gpufleet.batches.refusal import Refused

#: The largest ``POST /v1/batches`` body.
MAX_JSON_BODY: Final = 64 * 1024
#: ``completion_window``: hours, as OpenAI's ``24h`` (1 to 720 hours are taken).
_WINDOW = re.compile(r"([1-9][0-9]{0,2})h")
#: Paths the router answers itself: never a batch's endpoint.
_OWN_PATHS: Final = ("/v1/files", "/v1/batches", "/admin", "/dashboard")
_OWN_EXACT: Final = frozenset({"/health", "/stats", "/metrics"})


@dataclass(frozen=True, slots=True)
class BatchRequest:
    """A checked ``POST /v1/batches`` body."""

    input_file_id: str
    endpoint: str
    completion_window: str
    #: The completion window in hours.
    hours: int
    metadata: dict[str, str] | None

    @classmethod
    def parse(cls, body: dict[str, Any]) -> BatchRequest:
        """The request in a decoded body.

        Raises:
            Refused: 400 naming the first field at fault.
        """
        input_file_id = body.get("input_file_id")
        endpoint = body.get("endpoint")
        window = body.get("completion_window")
        metadata = body.get("metadata")
        if not isinstance(input_file_id, str):
            raise Refused(400, "input_file_id is required", param="input_file_id")
        if not isinstance(endpoint, str) or not _is_endpoint(endpoint):
            raise Refused(
                400,
                "endpoint must be a route the fleet serves, such as /v1/chat/completions, "
                "/v1/embeddings, /v1/images/generations or /predict",
                param="endpoint",
            )
        match = _WINDOW.fullmatch(window) if isinstance(window, str) else None
        if match is None or int(match.group(1)) > 720:
            raise Refused(
                400,
                "completion_window must be such as '24h' (1h to 720h)",
                param="completion_window",
            )
        return cls(
            input_file_id, endpoint, match.group(0), int(match.group(1)), _metadata(metadata)
        )

    def check_input(self, file: FileRecord, max_lines: int) -> None:
        """Refuse an input ``file`` that is not a batch input of this endpoint within
        ``max_lines`` requests (400, the line at fault where there is one)."""
        if file.purpose != PURPOSE_BATCH:
            raise Refused(
                400,
                f"file {file.id} has purpose {file.purpose!r}, not 'batch'",
                param="input_file_id",
            )
        for url, line in sorted(file.urls.items(), key=lambda kv: kv[1]):
            if url != self.endpoint:
                raise Refused(
                    400,
                    f"line {line}: url {url!r} is not the batch's endpoint {self.endpoint!r}",
                    param="input_file_id",
                    code="mismatched_url",
                    line=line,
                )
        if file.lines > max_lines:
            raise Refused(
                400,
                f"the file holds {file.lines} requests; a batch takes at most {max_lines}",
                param="input_file_id",
                code="too_many_requests",
            )


def _is_endpoint(path: str) -> bool:
    """A path the batch may send to: any route but the router's own."""
    if not path.startswith("/") or len(path) > 512 or not (path.isascii() and path.isprintable()):
        return False
    if " " in path or "?" in path or "#" in path or path in _OWN_EXACT:
        return False
    return not any(path == p or path.startswith(p + "/") for p in _OWN_PATHS)


def _metadata(metadata: Any) -> dict[str, str] | None:
    """OpenAI's bounds: at most 16 pairs, keys up to 64 characters, values up to 512."""
    if metadata is None:
        return None
    if not isinstance(metadata, dict) or len(metadata) > 16:
        raise Refused(400, "metadata must be an object of at most 16 pairs", param="metadata")
    for key, value in metadata.items():
        if len(key) > 64 or not isinstance(value, str) or len(value) > 512:
            raise Refused(
                400,
                "metadata keys are strings of up to 64 characters, values up to 512",
                param="metadata",
            )
    return metadata


async def read_json(request: web.Request) -> dict[str, Any]:
    """A JSON object body of at most ``MAX_JSON_BODY`` bytes."""
    length = request.content_length
    if length is not None and length > MAX_JSON_BODY:
        raise Refused(413, f"the body is larger than {MAX_JSON_BODY} bytes")
    raw = b""
    while chunk := await request.content.read(MAX_JSON_BODY + 1 - len(raw)):
        raw += chunk
        if len(raw) > MAX_JSON_BODY:
            raise Refused(413, f"the body is larger than {MAX_JSON_BODY} bytes")
    try:
        data = wire.decode_json(raw)
    except ValueError:
        raise Refused(400, "the body must be JSON") from None
    if not isinstance(data, dict):
        raise Refused(400, "the body must be a JSON object")
    return data


__all__ = ["MAX_JSON_BODY", "BatchRequest", "read_json"]
