"""What a real text-to-image model looks like as a gpufleet ``Model`` (a sketch, not shipped).

The built-in ``image-demo`` paints deterministic landscapes with numpy so that tests and
the bulk path run without weights. A real diffusion model has the same shape; only
``setup`` and ``predict`` do real work. Serve it with::

    pip install diffusers transformers accelerate
    gpufleet worker --model examples/diffusion_model.py:StableDiffusion \\
        --model-arg model_id=stabilityai/sd-turbo --model-arg steps=2 --max-batch-size 4

or one per GPU behind one endpoint with ``gpufleet up`` and the same ``--model``.
Each worker process sees exactly one GPU (``CUDA_VISIBLE_DEVICES`` is set by the fleet),
so ``device`` is ``"cuda"`` and everything runs on that device's one thread.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, ClassVar

from gpufleet import Model
from gpufleet.errors import BadRequest


@dataclass(frozen=True, slots=True)
class Prompt:
    """One image to make: what ``decode`` hands to ``predict``."""

    text: str
    seed: int
    width: int
    height: int


class StableDiffusion(Model):
    """A diffusers text-to-image pipeline behind gpufleet's batcher."""

    name: ClassVar[str] = "stable-diffusion"
    kind = "images"  # mounts POST /v1/images/generations
    max_batch_size: ClassVar[int | None] = 4  # what fits in memory; OOM halves it anyway
    binary_content_type: ClassVar[str] = "image/png"

    def __init__(self, model_id: str = "stabilityai/sd-turbo", steps: str = "2") -> None:
        # --model-arg values arrive as strings.
        self.model_id = model_id
        self.steps = int(steps)
        self.pipe: Any = None

    def setup(self, device: str) -> None:
        """Load the weights once per process, on the device thread."""
        import torch
        from diffusers import AutoPipelineForText2Image

        dtype = torch.float16 if device.startswith("cuda") else torch.float32
        self.pipe = AutoPipelineForText2Image.from_pretrained(self.model_id, torch_dtype=dtype)
        self.pipe.to(device)
        self.pipe.set_progress_bar_config(disable=True)
        self.device = device

    def decode(self, request: Any) -> Prompt:
        """Per-item body ``{"input": text, "seed": n, "parameters": {"width", "height"}}``.

        Validation happens here, per item, so one bad prompt is a 400 for its caller and
        never fails a whole batch on the GPU.
        """
        text = request.get("input")
        if not isinstance(text, str) or not text.strip():
            raise BadRequest("the input must be a non-empty prompt")
        params = request.get("parameters") or {}
        width, height = int(params.get("width", 512)), int(params.get("height", 512))
        if width % 8 or height % 8 or not (64 <= width <= 1024 and 64 <= height <= 1024):
            raise BadRequest("width and height must be multiples of 8 in 64..1024")
        return Prompt(text, int(request.get("seed", 0)), width, height)

    def predict(self, batch: list[Prompt]) -> list[bytes]:
        """One PNG per prompt, in order. Items of one batch share a size, so group by it."""
        import torch

        out: dict[int, bytes] = {}
        sizes = {(p.width, p.height) for p in batch}
        for width, height in sizes:
            idx = [i for i, p in enumerate(batch) if (p.width, p.height) == (width, height)]
            # One generator per item: an image depends on its own seed, not on its batch.
            generators = [
                torch.Generator(device=self.device).manual_seed(batch[i].seed) for i in idx
            ]
            images = self.pipe(
                prompt=[batch[i].text for i in idx],
                num_inference_steps=self.steps,
                guidance_scale=0.0,
                width=width,
                height=height,
                generator=generators,
            ).images
            for i, image in zip(idx, images, strict=True):
                buf = io.BytesIO()
                image.save(buf, format="PNG")
                out[i] = buf.getvalue()
        return [out[i] for i in range(len(batch))]
