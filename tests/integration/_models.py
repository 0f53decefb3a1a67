"""User model classes for worker tests, loaded the way users name them: ``path/file.py:Class``.

Each one makes a single hook observable from outside the worker process (a slow or failing
``encode``, a stream that records how it ended, a chat model).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from gpufleet import Model
from gpufleet.models.base import ModelKind

#: The file as ``--model`` takes it: ``spec("SlowEncode")`` → ``/…/_models.py:SlowEncode``.
HERE = Path(__file__).resolve()


def spec(class_name: str) -> str:
    """This file's ``path/to/file.py:Class`` name for ``class_name``."""
    return f"{HERE}:{class_name}"


class SlowEncode(Model):
    """Echoes; ``encode`` sleeps ``encode_s`` for the input "slow" and raises for "boom"."""

    name: ClassVar[str] = "slow-encode"
    max_batch_size: ClassVar[int | None] = 8

    def __init__(self, encode_s: str = "1.0") -> None:
        self.encode_s = float(encode_s)

    def predict(self, batch: list[Any]) -> list[Any]:
        return list(batch)

    def encode(self, output: Any) -> Any:
        if output == "slow":
            time.sleep(self.encode_s)
        if output == "boom":
            raise ValueError("cannot encode boom")
        return {"encoded": output, "thread": threading.current_thread().name}


class RecordingStream(Model):
    """Streams ``chunks`` pieces ``chunk_s`` apart and writes to ``record`` how it ended."""

    name: ClassVar[str] = "recording-stream"

    def __init__(self, record: str, chunks: str = "50", chunk_s: str = "0.2") -> None:
        self.record = Path(record)
        self.chunks = int(chunks)
        self.chunk_s = float(chunk_s)

    def predict(self, batch: list[Any]) -> list[Any]:
        return list(batch)

    def predict_stream(self, item: Any) -> Iterator[Any]:
        sent = 0
        how = "finished"
        try:
            for i in range(self.chunks):
                if i:  # the first piece comes at once, the rest slowly
                    time.sleep(self.chunk_s)
                yield {"index": i, "echo": item}
                sent += 1
        except GeneratorExit:
            how = "closed"
            raise
        finally:
            thread = threading.current_thread().name
            self.record.write_text(f"{how} {sent} {thread}\n")


class EchoChat(Model):
    """A chat model: answers the last user message, and the parameters it was given."""

    name: ClassVar[str] = "echo-chat"
    kind: ClassVar[ModelKind] = "chat"

    def decode(self, request: Any) -> Any:
        return {
            "messages": request["input"],
            "parameters": request.get("parameters") or {},
            "seed": request.get("seed"),
        }

    def _last_user(self, item: dict[str, Any]) -> str:
        users = [m["content"] for m in item["messages"] if m["role"] == "user"]
        return str(users[-1]) if users else ""

    def predict(self, batch: list[Any]) -> list[Any]:
        out = []
        for item in batch:
            params = item["parameters"]
            text = f"echo: {self._last_user(item)}"
            if "max_tokens" in params:
                text += f" (max_tokens={params['max_tokens']})"
            if item["seed"] is not None:
                text += f" (seed={item['seed']})"
            out.append(text)
        return out

    def predict_stream(self, item: Any) -> Iterator[Any]:
        for word in f"echo: {self._last_user(item)}".split(" "):
            yield word + " "


class CountingChat(Model):
    """A chat model that counts its own tokens (characters, here) and says so."""

    name: ClassVar[str] = "counting-chat"
    kind: ClassVar[ModelKind] = "chat"

    def predict(self, batch: list[Any]) -> list[Any]:
        return [
            {"content": "four", "usage": {"prompt_tokens": len(str(msgs)), "completion_tokens": 4}}
            for msgs in batch
        ]

    def predict_stream(self, item: Any) -> Iterator[Any]:
        yield "fo"
        yield {"content": "ur", "usage": {"prompt_tokens": 11, "completion_tokens": 4}}


class TinyEmbed(Model):
    """An embeddings model without weights: a text's 4-number fingerprint."""

    name: ClassVar[str] = "tiny-embed"
    kind: ClassVar[ModelKind] = "embeddings"

    def predict(self, batch: list[Any]) -> list[Any]:
        return [[float(len(t)), float(sum(map(ord, t)) % 97), 1.0, 0.0] for t in batch]
