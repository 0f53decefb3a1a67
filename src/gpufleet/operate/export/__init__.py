"""Deployment files from the fleet's settings: ``gpufleet export nginx|systemd|compose|k8s|slurm``.

Every format renders the same :class:`ExportLayout`, laid out from the effective
``FleetConfig`` that ``gpufleet up`` would run (flags > ``GPUFLEET_*`` env > YAML > defaults).
"""

from __future__ import annotations

from collections.abc import Callable

from gpufleet.operate.export.compose import render_compose
from gpufleet.operate.export.k8s import render_k8s
from gpufleet.operate.export.layout import ExportLayout, PoolLayout, Slot, plan_export
from gpufleet.operate.export.nginx import render_nginx
from gpufleet.operate.export.options import ExportOptions
from gpufleet.operate.export.slurm import render_slurm
from gpufleet.operate.export.systemd import render_systemd

Renderer = Callable[[ExportLayout, ExportOptions], str]

#: Format name -> renderer (the ``gpufleet export`` argument).
FORMATS: dict[str, Renderer] = {
    "nginx": render_nginx,
    "systemd": render_systemd,
    "compose": render_compose,
    "k8s": render_k8s,
    "slurm": render_slurm,
}


def render(fmt: str, layout: ExportLayout, opts: ExportOptions) -> str:
    """The text of one deployment file.

    Raises:
        KeyError: ``fmt`` is not one of :data:`FORMATS`.
    """
    return FORMATS[fmt](layout, opts)


__all__ = [
    "FORMATS",
    "ExportLayout",
    "ExportOptions",
    "PoolLayout",
    "Renderer",
    "Slot",
    "plan_export",
    "render",
]
