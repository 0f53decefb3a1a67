"""Bulk jobs over one or many endpoints: pull-based dispatch, retries, resume, outputs.

``Client`` sends items; ``run_job`` adds the folder of outputs, ``results.jsonl``,
``summary.json`` and resume on top (what ``gpufleet generate`` runs).
"""

from gpufleet.client.client import Client
from gpufleet.client.items import Item, Result, read_items
from gpufleet.client.jobs import run_job

__all__ = ["Client", "Item", "Result", "read_items", "run_job"]
