"""The router's admin API (``/admin/workers``): what its calls send and what they answer.

The server is ``gpufleet.router.admin.AdminAPI``; its one client is
``gpufleet.wire.admin_client.AdminClient``. Answers are ``UpstreamView``s.
"""

from __future__ import annotations

from typing import Final

import msgspec

from gpufleet.wire.stats import UpstreamView

#: The pool an upstream joins when none is named (the router's ``DEFAULT_POOL``).
DEFAULT_POOL: Final = "default"


class AddUpstream(msgspec.Struct, kw_only=True, omit_defaults=True):
    """``POST /admin/workers``: add ``url`` to ``pool`` (again: back into rotation).

    ``weight`` is a number, or a string the router parses as one (``"2"``).
    """

    url: str
    pool: str = DEFAULT_POOL
    weight: float | str | None = None
    labels: dict[str, str] | None = None


class UpstreamList(msgspec.Struct):
    """``GET /admin/workers``: every upstream the router knows (draining ones too)."""

    workers: list[UpstreamView]


__all__ = ["DEFAULT_POOL", "AddUpstream", "UpstreamList", "UpstreamView"]
