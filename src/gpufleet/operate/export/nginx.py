"""``gpufleet export nginx``: upstream and server blocks for users who keep nginx in front.

The file goes in nginx's ``http`` context (``/etc/nginx/conf.d/gpufleet.conf``). nginx then
does the router's job, with fewer tricks: ``least_conn`` instead of shortest expected wait,
passive health (``max_fails``/``fail_timeout``, the router's own numbers), a retry only
where the request was never sent (nginx does not resend a POST it began to send, so a
worker's full-queue 503 reaches the client: the router's retry of it is not reproduced).
The proxy settings keep streams flowing: HTTP/1.1 with keep-alive to the workers, no
buffering of the answer, read timeouts as long as the router's request timeout.
"""

from __future__ import annotations

import math
import re
import shlex

from gpufleet.operate.export.layout import ExportLayout, PoolLayout
from gpufleet.operate.export.options import ExportOptions, header

#: Idle keep-alive connections each nginx worker keeps per upstream block.
KEEPALIVE = 32


def _duration(seconds: float) -> str:
    """An nginx time: ``30s``, or ``500ms`` below a whole second."""
    if seconds >= 1 and float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{max(1, math.ceil(seconds * 1000))}ms"


def _size(mb: float) -> str:
    return f"{int(mb)}m" if float(mb).is_integer() else f"{math.ceil(mb * 1024)}k"


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def upstream_name(pool: str) -> str:
    """The upstream block's name for a router pool (``gpufleet_default``)."""
    return "gpufleet_" + re.sub(r"[^A-Za-z0-9_]", "_", pool)


def _upstream(layout: ExportLayout, router_pool: str, members: list[PoolLayout]) -> list[str]:
    r = layout.router
    # A worker listening on every address is reached on loopback.
    host = layout.fleet.worker_host
    if host in {"0.0.0.0", "::"}:
        host = "127.0.0.1"
    lines = [f"upstream {upstream_name(router_pool)} {{", "    least_conn;"]
    for pool in members:
        for slot in pool.slots:
            lines.append(
                f"    server {_address(host, slot.port)} max_fails={r.max_fails} "
                f"fail_timeout={_duration(r.fail_timeout_s)};  # {pool.name} {slot.device}"
            )
    lines += [f"    keepalive {KEEPALIVE};", "    keepalive_timeout 60s;", "}", ""]
    return lines


def _location(path: str, target: str, *, exact: bool = False) -> list[str]:
    modifier = "= " if exact else ""
    return [f"    location {modifier}{path} {{", f"        proxy_pass {target};", "    }"]


def render_nginx(layout: ExportLayout, opts: ExportOptions) -> str:
    """The nginx configuration text (``http`` context)."""
    r = layout.router
    lines = header(layout, opts)
    lines += [
        "#",
        "# Goes in nginx's http context, e.g. /etc/nginx/conf.d/gpufleet.conf.",
        "# nginx takes the router's place: start the workers it points at, e.g.",
    ]
    for pool in layout.pools:
        for slot in pool.slots:
            argv = pool.worker_argv(
                slot, exe=opts.exe, host=layout.fleet.worker_host, config_path=opts.config_path
            )
            env = f"CUDA_VISIBLE_DEVICES={shlex.quote(slot.visible_devices)} "
            lines.append(f"#   {env}{shlex.join(argv)}")
    lines += [
        "# or `gpufleet up ... --worker-base-port "
        f"{layout.slots[0].port} --port <another port>` (its router then stands by).",
        "",
    ]
    by_pool: dict[str, list[PoolLayout]] = {}
    for pool in layout.pools:
        if pool.slots:
            by_pool.setdefault(pool.router_pool, []).append(pool)
    for router_pool, members in by_pool.items():
        lines += _upstream(layout, router_pool, members)
    tries = r.retries + 1
    lines += [
        "server {",
        f"    listen {_address(layout.fleet.host, layout.port)};",
        f"    client_max_body_size {_size(r.max_body_mb)};",
        "",
        "    # Keep-alive to the workers, and streams (server-sent events) passed on as they come.",
        "    proxy_http_version 1.1;",
        '    proxy_set_header Connection "";',
        "    # Workers get a loopback Host (bound to loopback, they serve only loopback names:",
        "    # DNS rebinding); the name the client used goes in X-Forwarded-Host.",
        "    proxy_set_header Host localhost;",
        "    proxy_set_header X-Forwarded-Host $host;",
        "    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        "    proxy_set_header X-Forwarded-Proto $scheme;",
        "    proxy_buffering off;",
        "    proxy_cache off;",
        "    proxy_request_buffering off;",
        f"    proxy_connect_timeout {_duration(min(r.connect_timeout_s, 75.0))};",
        f"    proxy_send_timeout {_duration(r.timeout_s)};",
        f"    proxy_read_timeout {_duration(r.timeout_s)};",
        "    # Another worker only when this one could not be reached (refused, connect timeout):",
        "    # nginx never passes on a POST it began to send (not non_idempotent, and with",
        "    # proxy_request_buffering off it cannot resend the body). The router's retry of a",
        "    # full queue is not reproduced: a worker's 503 + Retry-After reaches the client.",
        "    proxy_next_upstream error timeout;",
        f"    proxy_next_upstream_tries {tries};",
        f"    proxy_next_upstream_timeout {_duration(r.timeout_s)};",
        "",
    ]
    for pool in layout.pools:
        if pool.prefix is None or not pool.slots:
            continue
        target = f"http://{upstream_name(pool.router_pool)}/"
        # Like the router, the prefix is stripped: /fast/predict reaches a worker as /predict.
        lines += _location(f"{pool.prefix}/", target)
        lines += _location(pool.prefix, target, exact=True)
    if "default" in by_pool:
        lines += _location("/", f"http://{upstream_name('default')}")
    else:
        lines += ["    location / {", "        return 404;", "    }"]
    lines += ["}", ""]
    return "\n".join(lines)


__all__ = ["KEEPALIVE", "render_nginx", "upstream_name"]
