"""``image-demo``: a small, deterministic prompt → PNG generator. A DEMO, not a diffusion model.

It exists so that the bulk path (prompts in, image files out) runs end to end without
downloaded weights: the same prompt and seed always give the same bytes. It paints a
landscape (sky, sun or moon, layered ridges, water) whose palette follows words in the
prompt ("night", "sunset", "forest", "ocean", "desert", "snow"…) and a hash of it, then
writes the prompt as a caption. ``examples/diffusion_model.py`` shows what a real model
class looks like.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from gpufleet.errors import ConfigError, Unprocessable
from gpufleet.models.base import Model, ModelKind

_MIN_SIDE, _MAX_SIDE = 16, 1024

# (sky top, sky bottom, ridge far, ridge near, water) as RGB, picked by prompt words.
_PALETTES: dict[str, tuple[tuple[int, int, int], ...]] = {
    "night": ((8, 10, 40), (40, 40, 90), (30, 30, 60), (12, 12, 28), (20, 24, 60)),
    "sunset": ((60, 40, 110), (250, 150, 80), (120, 60, 90), (50, 25, 45), (180, 90, 80)),
    "forest": ((120, 180, 230), (210, 235, 250), (70, 120, 80), (20, 60, 30), (60, 110, 100)),
    "ocean": ((70, 140, 220), (190, 225, 250), (90, 120, 150), (40, 70, 100), (20, 90, 160)),
    "desert": ((120, 170, 230), (250, 225, 180), (210, 150, 90), (160, 100, 50), (200, 170, 120)),
    "snow": ((150, 180, 220), (235, 240, 250), (200, 210, 225), (150, 160, 180), (180, 200, 220)),
}
_WORDS = {
    "night": ("night", "moon", "star", "dark", "midnight"),
    "sunset": ("sunset", "dusk", "evening", "sunrise", "dawn", "orange"),
    "forest": ("forest", "tree", "wood", "green", "jungle", "meadow"),
    "ocean": ("ocean", "sea", "beach", "wave", "lake", "river", "water"),
    "desert": ("desert", "sand", "dune", "canyon"),
    "snow": ("snow", "winter", "ice", "glacier", "frozen"),
}


@dataclass(frozen=True, slots=True)
class ImageRequest:
    """One image to paint."""

    prompt: str
    seed: int
    width: int
    height: int


def _palette(prompt: str, rng: np.random.Generator) -> np.ndarray:
    words = prompt.lower()
    for name, keys in _WORDS.items():
        if any(k in words for k in keys):
            base = np.array(_PALETTES[name], dtype=np.float64)
            break
    else:
        base = np.array(_PALETTES[list(_PALETTES)[rng.integers(len(_PALETTES))]], np.float64)
    # A small seeded shift, so that seeds of one prompt differ but keep its mood.
    return np.clip(base + rng.normal(0.0, 12.0, base.shape), 0, 255)


def _ridge(width: int, rng: np.random.Generator, roughness: float) -> np.ndarray:
    """A 1-D fractal skyline in 0..1 (sum of smoothed noise octaves)."""
    x = np.linspace(0.0, 1.0, width)
    out = np.zeros(width)
    for octave in range(5):
        knots = 3 * 2**octave + 1
        values = rng.normal(0.0, roughness / 2**octave, knots)
        out += np.interp(x, np.linspace(0.0, 1.0, knots), values)
    return out


def paint(req: ImageRequest) -> Image.Image:
    """Paint the picture for ``req`` (pure: same request, same pixels)."""
    digest = hashlib.sha256(f"{req.prompt}\x00{req.seed}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    w, h = req.width, req.height
    sky_top, sky_bottom, far, near, water = _palette(req.prompt, rng)
    t = np.linspace(0.0, 1.0, h)[:, None, None]
    img = (sky_top * (1 - t) + sky_bottom * t) * np.ones((1, w, 1))
    yy, xx = np.mgrid[0:h, 0:w]
    # Sun or moon: a soft disc.
    cx, cy, r = rng.uniform(0.15, 0.85) * w, rng.uniform(0.12, 0.4) * h, rng.uniform(0.05, 0.1)
    dist = np.hypot(xx - cx, yy - cy) / (r * min(w, h))
    glow = np.clip(1.3 - dist, 0.0, 1.0)[..., None]
    img = img * (1 - glow) + np.array([255.0, 240.0, 200.0]) * glow
    horizon = rng.uniform(0.6, 0.75)
    for depth, color in ((0.0, far), (1.0, near)):
        level = horizon - 0.18 + 0.1 * depth + _ridge(w, rng, 0.08 - 0.03 * depth)
        mask = (yy / h) > level[None, :]
        img[mask] = color
    sea = yy > horizon * h + 0.12 * h
    shimmer = 0.85 + 0.15 * np.sin(yy * 0.9 + rng.uniform(0, 6.28))
    img[sea] = water * shimmer[sea][:, None] * 0.6 + img[sea] * 0.4
    image = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")
    _caption(image, req.prompt)
    return image


def _caption(image: Image.Image, prompt: str) -> None:
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    text = prompt if len(prompt) <= 48 else prompt[:45] + "..."
    draw.rectangle((0, image.height - 14, image.width, image.height), fill=(0, 0, 0))
    draw.text((3, image.height - 13), text, fill=(255, 255, 255), font=font)


class ImageDemo(Model):
    """Prompt (+ seed, + width/height parameters) → PNG bytes. Deterministic; no weights."""

    name: ClassVar[str] = "image-demo"
    kind: ClassVar[ModelKind] = "images"
    max_batch_size: ClassVar[int | None] = 8
    binary_content_type: ClassVar[str] = "image/png"

    def __init__(self, width: str | int = 256, height: str | int = 256) -> None:
        try:
            self.width, self.height = _side(width, "width"), _side(height, "height")
        except Unprocessable as exc:
            raise ConfigError(f"image-demo: {exc.message}") from None

    def decode(self, request: Any) -> Any:
        """``{"input": prompt, "seed"?: int, "parameters"?: {"width", "height"}}``."""
        if isinstance(request, dict):
            prompt, seed = request.get("input"), request.get("seed", 0)
            params = request.get("parameters") or {}
        else:
            prompt, seed, params = request, 0, {}
        if not isinstance(prompt, str) or not prompt.strip():
            raise Unprocessable("image-demo takes a non-empty prompt string as input")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise Unprocessable("seed must be an integer")
        if not isinstance(params, dict):
            raise Unprocessable("parameters must be an object")
        unknown = sorted(set(params) - {"width", "height"})
        if unknown:
            raise Unprocessable(f"image-demo: unknown parameter(s) {', '.join(unknown)}")
        return ImageRequest(
            prompt,
            seed,
            _side(params.get("width", self.width), "width"),
            _side(params.get("height", self.height), "height"),
        )

    def predict(self, batch: list[Any]) -> list[Any]:
        """One PNG (bytes) per request."""
        out = []
        for req in batch:
            buf = io.BytesIO()
            paint(req).save(buf, format="PNG")
            out.append(buf.getvalue())
        return out


def _side(value: Any, name: str) -> int:
    try:
        side = int(value)
    except (TypeError, ValueError):
        raise Unprocessable(f"{name} must be an integer, got {value!r}") from None
    if isinstance(value, bool) or not _MIN_SIDE <= side <= _MAX_SIDE:
        raise Unprocessable(f"{name} must be in {_MIN_SIDE}..{_MAX_SIDE}, got {value!r}")
    return side
