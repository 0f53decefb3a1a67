"""Helpers of the export tests: settings -> layout, and GPUs as discovery would find them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gpufleet.config import load
from gpufleet.config.fleet import load_fleet_config
from gpufleet.config.router import RouterConfig
from gpufleet.fleet.devices import Discovery, Gpu, parse_query_output
from gpufleet.operate.export import ExportLayout, plan_export

UUIDS = [f"GPU-{i}{i}{i}{i}aaaa-0000-1111-2222-33334444555{i}" for i in range(4)]
QUERY = "".join(f"{i}, {UUIDS[i]}, NVIDIA A100-SXM4-80GB, 81920 MiB\n" for i in range(4))
NONE_FOUND = Discovery((), "none")


def four_gpus() -> Discovery:
    """What nvidia-smi finds on a 4-GPU machine."""
    return Discovery(tuple(parse_query_output(QUERY)), "nvidia-smi")


def layout_of(
    flags: dict[str, Any] | None = None,
    *,
    config: Path | None = None,
    found: Discovery = NONE_FOUND,
) -> ExportLayout:
    """The layout `gpufleet export` builds from these flags and file (no GPUFLEET_* env)."""
    cfg = load_fleet_config(flags=flags, config_path=config, env={})
    router = load(RouterConfig, "router", config_path=config, env={})
    return plan_export(cfg, router, found)


def write_config(folder: Path, text: str) -> Path:
    path = folder / "fleet.yaml"
    path.write_text(text, encoding="utf-8")
    return path


POOLS_YAML = """\
fleet:
  policy: least-outstanding
  pools:
    fast:    {model: synthetic, gpus: "0,1", prefix: /fast, model_args: {base_ms: "5"}}
    quality: {model: minilm,    gpus: "2,3"}
router:
  max_fails: 5
  fail_timeout_s: 7
  timeout_s: 120
worker:
  max_wait_ms: 5
"""

__all__ = ["NONE_FOUND", "POOLS_YAML", "QUERY", "UUIDS", "Gpu", "four_gpus", "layout_of"]
