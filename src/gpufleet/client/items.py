"""What a bulk job is made of: items in, results out, and reading items from a file.

A prompts file is either text (one prompt or image URL per line; blank lines and lines
starting with ``#`` are skipped; the id is the line number, zero-padded) or JSONL (one
object per line with ``id``, ``input`` and optional ``seed`` and ``parameters``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from gpufleet.errors import ConfigError

Status = Literal["ok", "failed", "skipped"]
_JSONL_KEYS = frozenset({"id", "input", "seed", "parameters"})


@dataclass(frozen=True, slots=True)
class Item:
    """One unit of work: ``input`` is sent as the request's ``input``."""

    input: Any
    #: Names the output file and the line in ``results.jsonl``; defaults to the position.
    id: str | None = None
    #: This item's seed; None takes the job's ``seed + index``.
    seed: int | None = None
    #: Sent as the request's ``parameters`` object.
    parameters: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Answer:
    """One successful answer: the output, its media type, and who served it."""

    output: Any
    content_type: str = "application/json"
    #: The worker behind a router (its ``X-Gpufleet-Upstream`` header), when told.
    upstream: str | None = None


@dataclass(slots=True)
class Result:
    """What became of one item."""

    id: str
    index: int
    status: Status
    #: The answer: ``bytes`` for binary outputs (images), else the decoded JSON value.
    output: Any = None
    content_type: str = "application/json"
    endpoint: str | None = None
    attempts: int = 0
    seconds: float = 0.0
    error: str | None = None
    seed: int | None = None
    #: Every endpoint that was tried, in order.
    tried: list[str] = field(default_factory=list)
    #: The worker behind a router that served the item, when the router says so.
    upstream: str | None = None

    @property
    def ok(self) -> bool:
        """True when the item succeeded."""
        return self.status == "ok"


def as_items(values: Iterable[Item | Any], *, seed: int | None) -> list[Item]:
    """Turn plain values into ``Item`` s, giving each an id and its seed (``seed + i``)."""
    out: list[Item] = []
    for i, value in enumerate(values):
        item = value if isinstance(value, Item) else Item(input=value)
        item_id = str(i) if item.id is None else str(item.id)
        item_seed = item.seed if item.seed is not None else (None if seed is None else seed + i)
        out.append(replace(item, id=item_id, seed=item_seed))
    return out


def read_items(path: str | Path) -> list[Item]:
    """Read a prompts file (text or JSONL, told apart by its first non-blank line).

    Raises:
        ConfigError: the file cannot be read, or a JSONL line is malformed.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read prompts file {p}: {exc}") from exc
    lines = text.splitlines()
    first = next((ln.strip() for ln in lines if ln.strip()), "")
    is_jsonl = p.suffix.lower() in {".jsonl", ".ndjson"} or first.startswith("{")
    return _read_jsonl(p, lines) if is_jsonl else _read_text(lines)


def _read_text(lines: list[str]) -> list[Item]:
    width = max(6, len(str(len(lines))))
    items = []
    for number, line in enumerate(lines, start=1):
        prompt = line.strip()
        if prompt and not prompt.startswith("#"):
            items.append(Item(input=prompt, id=f"{number:0{width}d}"))
    return items


def _read_jsonl(path: Path, lines: list[str]) -> list[Item]:
    items = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where}: not valid JSON ({exc.msg})") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: each line must be a JSON object")
        unknown = sorted(set(data) - _JSONL_KEYS)
        if unknown:
            raise ConfigError(
                f"{where}: unknown key(s) {', '.join(unknown)}; use id, input, seed, parameters"
            )
        if "input" not in data:
            raise ConfigError(f"{where}: missing 'input'")
        seed = data.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ConfigError(f"{where}: 'seed' must be an integer")
        params = data.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise ConfigError(f"{where}: 'parameters' must be an object")
        item_id = data.get("id")
        if item_id is not None and not isinstance(item_id, (str, int)):
            raise ConfigError(f"{where}: 'id' must be a string or an integer")
        items.append(
            Item(
                input=data["input"],
                id=str(item_id) if item_id is not None else f"{number:06d}",
                seed=seed,
                parameters=params,
            )
        )
    return items
