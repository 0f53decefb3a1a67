"""The contract a user's model class meets to be served by a gpufleet worker.

A worker process creates the class once (with ``--model-arg`` keyword arguments), calls
``setup(device)`` once on its device thread, then calls ``predict(batch)`` with lists of
decoded inputs. ``predict`` returns one output per input, in order. Everything else is
optional::

    class Echo(Model):
        name = "echo"
        kind = "generic"
        max_batch_size = 16

        def setup(self, device: str) -> None:
            self.device = device

        def predict(self, batch: list[Any]) -> list[Any]:
            return batch
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar, Literal

ModelKind = Literal["embeddings", "images", "chat", "generic"]
MODEL_KINDS: tuple[ModelKind, ...] = ("embeddings", "images", "chat", "generic")


class Model:
    """Base class of served models: override ``setup`` and ``predict``; the rest is optional."""

    #: Name reported in /stats and in OpenAI-shaped answers.
    name: ClassVar[str] = "model"
    #: Which OpenAI-shaped route the worker mounts besides /predict.
    kind: ClassVar[ModelKind] = "generic"
    #: The model's preferred largest batch; ``--max-batch-size`` overrides it.
    max_batch_size: ClassVar[int | None] = None

    def setup(self, device: str) -> None:
        """Load weights onto ``device`` (``"cuda"``, ``"cuda:0"`` or ``"cpu"``); called once."""

    def predict(self, batch: list[Any]) -> list[Any]:
        """Return one output per input of ``batch``, in the same order."""
        raise NotImplementedError(f"{type(self).__name__} does not implement predict()")

    def decode(self, request: Any) -> Any:
        """Turn one per-item request body into what ``predict`` takes.

        The worker calls it with ``{"input": x, "seed"?: ..., "parameters"?: ...}`` for each
        input of a request; the default returns ``x`` (a body without ``"input"`` is
        returned as it is). Override it to read ``seed`` or ``parameters``. It runs on the
        event loop so that its errors answer 400/422 at once: keep it to checking and light
        parsing, and leave heavy work to ``predict``. For kind ``chat`` the body is
        ``{"input": messages, "seed"?: ..., "parameters": {"max_tokens", "temperature", ...}}``.
        """
        if isinstance(request, dict) and "input" in request:
            return request["input"]
        return request

    @classmethod
    def overrides_decode(cls) -> bool:
        """True when the class reads the whole per-item body itself."""
        return cls.decode is not Model.decode

    def encode(self, output: Any) -> Any:
        """Turn one ``predict`` output into a JSON value or ``bytes`` (sent as base64).

        Runs on the device thread right after ``predict`` (and after each piece of
        ``predict_stream``), never on the event loop: a slow ``encode`` delays the next
        batch but not ``/health`` or ``/stats``. If it raises, only that output's caller
        gets a 500.
        """
        return output

    def predict_stream(self, item: Any) -> Iterator[Any]:
        """Optional streaming variant: yield the pieces of one item's answer.

        The worker serves it as server-sent events on ``POST /predict`` with
        ``"stream": true`` (and ``/v1/chat/completions`` for kind ``chat``), stepping it on
        the device thread. When the caller leaves early the generator is closed there, so
        a ``finally`` in it runs. The default yields the whole ``predict`` answer once.
        """
        yield self.predict([item])[0]

    @classmethod
    def supports_streaming(cls) -> bool:
        """True when the class overrides ``predict_stream``."""
        return cls.predict_stream is not Model.predict_stream

    #: MIME type of ``bytes`` outputs (images set ``image/png``).
    binary_content_type: ClassVar[str] = "application/octet-stream"
