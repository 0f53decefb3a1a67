"""The simulated engine's knobs: one frozen dataclass, and the CLI flags made from its fields."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from gpufleet.errors import ConfigError

#: Which engine's routes to answer (a router may tell engines apart by their routes).
APIS = ("both", "vllm", "sglang")


def _knob(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """How fast, how wide and how forgetful the simulated engine is (defaults: a small GPU)."""

    model_name: str = _knob("sim-llm", "served model name (/v1/models, answers, metric labels)")
    speed: float = _knob(1.0, "divides every time (0.25 = four times slower)")
    step_base_ms: float = _knob(8.0, "fixed cost of one engine step")
    step_per_seq_ms: float = _knob(0.15, "cost per running sequence in a step")
    prefill_us_per_token: float = _knob(
        40.0, "cost per uncached prompt token admitted in a step (microseconds)"
    )
    max_running: int = _knob(64, "most sequences in the running batch")
    max_prefill_tokens: int = _knob(
        8192, "uncached prompt tokens admitted per step (a longer prompt goes alone)"
    )
    kv_blocks: int = _knob(2048, "KV cache capacity in blocks")
    block_tokens: int = _knob(16, "tokens per KV block")
    max_tokens_default: int = _knob(64, "completion tokens when a request names none")
    max_waiting: int = _knob(4096, "waiting sequences beyond which a request gets 503")
    seed: int = _knob(0, "seed of the generated words")
    api: str = _knob(
        "both",
        "routes to answer: vllm (OpenAI routes, /metrics), sglang (OpenAI routes, /generate, "
        "/get_server_info and friends, no /metrics) or both",
        APIS,
    )

    def __post_init__(self) -> None:
        for name in ("speed", "step_base_ms", "step_per_seq_ms", "prefill_us_per_token"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.speed <= 0:
            raise ConfigError(f"speed must be > 0, got {self.speed}")
        for name in (
            "max_running",
            "max_prefill_tokens",
            "kv_blocks",
            "block_tokens",
            "max_tokens_default",
            "max_waiting",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.api not in APIS:
            raise ConfigError(f"api must be one of {', '.join(APIS)}, got {self.api!r}")
        if not self.model_name:
            raise ConfigError("model_name must not be empty")

    @property
    def max_context_tokens(self) -> int:
        """Prompt plus completion tokens one sequence may hold: the whole KV cache."""
        return self.kv_blocks * self.block_tokens


def add_engine_flags(parser: argparse.ArgumentParser) -> None:
    """Add one ``--flag`` per :class:`EngineConfig` field (name, type, default, help)."""
    for f in dataclasses.fields(EngineConfig):
        kind = type(f.default)
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            type=kind,
            default=f.default,
            choices=f.metadata["choices"],
            help=f"{f.metadata['help']} (default: {f.default})",
        )


def config_from_args(args: argparse.Namespace) -> EngineConfig:
    """The :class:`EngineConfig` named by parsed flags."""
    return EngineConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(EngineConfig)})
