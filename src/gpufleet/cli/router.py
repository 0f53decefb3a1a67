"""`gpufleet router`: one endpoint in front of many workers or any HTTP model servers."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from gpufleet.cli._common import config_errors_exit, run_async, setup_logging


def router(
    worker: list[str] | None = typer.Option(
        None, "--worker", "-w", help="upstream [POOL@]URL[=WEIGHT] (repeatable)"
    ),
    route: list[str] | None = typer.Option(
        None, "--route", help="PREFIX=POOL: paths under PREFIX go to POOL, prefix stripped"
    ),
    policy: str | None = typer.Option(
        None,
        help="routing policy (prefix: by prompt prefix for LLM bodies, else as capacity)",
    ),
    prefix_cache_mb: float | None = typer.Option(
        None, "--prefix-cache-mb", help="memory bound of the prompt-prefix index (default 64)"
    ),
    prefix_ttl: float | None = typer.Option(
        None, "--prefix-ttl", help="forget prefixes unused this long, s (default 600)"
    ),
    host: str | None = typer.Option(None, help="address to bind (default 127.0.0.1)"),
    port: int | None = typer.Option(None, help="port to bind; 0 picks a free one (default 8000)"),
    port_file: str | None = typer.Option(None, help="write the bound port here once listening"),
    allowed_host: list[str] | None = typer.Option(
        None,
        "--allowed-host",
        help="host name served besides loopback ones (repeatable; bound to a non-loopback "
        "address: the only names served, default any; * any, *.x.com subdomains)",
    ),
    max_outstanding: int | None = typer.Option(
        None, help="cap per upstream; 0 = 2 x a gpufleet worker's batch size, else 4 (default 0)"
    ),
    max_queue: int | None = typer.Option(
        None, help="requests that may wait when all upstreams are at their cap (default 1024)"
    ),
    queue_timeout: float | None = typer.Option(
        None, "--queue-timeout", help="longest wait in the admission queue, s (default 30)"
    ),
    timeout: float | None = typer.Option(
        None, "--timeout", help="deadline of a request, all attempts included, s (default 300)"
    ),
    connect_timeout: float | None = typer.Option(
        None, "--connect-timeout", help="connect timeout per attempt, s (default 2)"
    ),
    first_byte_timeout: float | None = typer.Option(
        None,
        "--first-byte-timeout",
        help="longest wait for an attempt's answer to begin, s; 0 = learned per upstream "
        "(10 x its p99, at least 1 s) (default 0)",
    ),
    stream_idle_timeout: float | None = typer.Option(
        None, "--stream-idle-timeout", help="cut a streamed answer silent this long, s (default 60)"
    ),
    client_write_timeout: float | None = typer.Option(
        None,
        "--client-write-timeout",
        help="drop a client that accepts no answer bytes this long, s (default 30)",
    ),
    retries: int | None = typer.Option(
        None, help="attempts after the first, on other upstreams (default 2)"
    ),
    retry_lost: bool | None = typer.Option(
        None,
        "--retry-lost/--no-retry-lost",
        help="also retry requests lost after sending on non-idempotent methods of servers "
        "other than gpufleet workers (default off)",
    ),
    retry_budget: float | None = typer.Option(
        None, "--retry-budget", help="retries as a % of requests over 10 s, at most (default 20)"
    ),
    retry_budget_min: int | None = typer.Option(
        None, "--retry-budget-min", help="retries always allowed concurrently (default 3)"
    ),
    health_interval: float | None = typer.Option(
        None, "--health-interval", help="seconds between probes (default 1)"
    ),
    health_timeout: float | None = typer.Option(
        None, "--health-timeout", help="probe timeout, s (default 1)"
    ),
    health_path: str | None = typer.Option(None, help="probe path (default /health)"),
    eject_after: int | None = typer.Option(None, help="failed probes that eject (default 3)"),
    readmit_after: int | None = typer.Option(None, help="good probes that re-admit (default 2)"),
    max_fails: int | None = typer.Option(
        None, help="passive: failures within --fail-timeout that eject (default 3)"
    ),
    fail_timeout: float | None = typer.Option(
        None, "--fail-timeout", help="passive: failure window and ejection time, s (default 10)"
    ),
    max_ejection_percent: float | None = typer.Option(
        None,
        "--max-ejection-percent",
        help="passive: most of a pool ejected at once, % (at least one; never the last ready "
        "for a 5xx the upstream does not call its own) (default 50)",
    ),
    sticky_header: str | None = typer.Option(
        None, help="header the sticky policy hashes (default X-Session-Id)"
    ),
    admin_token: str | None = typer.Option(
        None,
        help="Bearer token of /admin; visible to every local user in ps: prefer "
        "GPUFLEET_ADMIN_TOKEN or --admin-token-file; unset: admin API off",
    ),
    admin_port: int | None = typer.Option(
        None,
        "--admin-port",
        help="serve /admin on a listener of its own on this port (the endpoint then "
        "answers /admin 404); unset: on the endpoint",
    ),
    admin_host: str | None = typer.Option(
        None, "--admin-host", help="address of the admin listener (default 127.0.0.1)"
    ),
    admin_token_file: str | None = typer.Option(
        None, "--admin-token-file", help="file whose first line is the /admin Bearer token"
    ),
    allow_upstream: list[str] | None = typer.Option(
        None,
        "--allow-upstream",
        help="CIDR that admin-added upstreams may resolve into besides loopback "
        "(repeatable); unset: loopback only",
    ),
    forward_auth: bool | None = typer.Option(
        None,
        "--forward-auth/--no-forward-auth",
        help="pass clients' Authorization and Cookie headers on to upstreams (an engine "
        "with --api-key); off: they stay at the router",
    ),
    max_body_mb: float | None = typer.Option(None, help="largest request body (default 32)"),
    max_header_kb: int | None = typer.Option(None, help="largest header line (default 16)"),
    drain_timeout: float | None = typer.Option(
        None, "--drain-timeout", help="how long SIGTERM waits for in-flight work (default 30)"
    ),
    log_level: str | None = typer.Option(None, help="how much to log"),
    batch_share: float | None = typer.Option(
        None,
        "--batch-share",
        help="most of each upstream's cap batch-class requests may hold, % (at least one "
        "slot; the rest stays free for interactive bursts) (default 75)",
    ),
    batch_store: str | None = typer.Option(
        None,
        "--batch-store",
        help="directory of the Batch API's store (SQLite + files); unset: no Batch API "
        "(/v1/files and /v1/batches are proxied)",
    ),
    batch_max_file_mb: float | None = typer.Option(
        None, "--batch-max-file-mb", help="largest batch input file, MB (default 200)"
    ),
    batch_max_lines: int | None = typer.Option(
        None, "--batch-max-lines", help="most requests in one batch (default 50000)"
    ),
    batch_max_store_gb: float | None = typer.Option(
        None, "--batch-max-store-gb", help="most bytes of files the store keeps, GB (default 20)"
    ),
    batch_retention_h: float | None = typer.Option(
        None,
        "--batch-retention-h",
        help="delete files and finished batches older than this, hours (default 720)",
    ),
    batch_max_in_flight: int | None = typer.Option(
        None,
        "--batch-max-in-flight",
        help="most batch requests in flight per pool (the window follows the pool's batch "
        "capacity up to this) (default 512)",
    ),
    config: Path | None = typer.Option(None, "--config", help="YAML file; its router: section"),
) -> None:
    """Balance requests over upstreams: health checks, safe retries, admission queue."""
    from gpufleet.config import load
    from gpufleet.config.router import RouterConfig
    from gpufleet.router.app import RouterState

    with config_errors_exit():
        flags = {
            "workers": tuple(worker) if worker else None,
            "routes": tuple(route) if route else None,
            "policy": policy,
            "prefix_cache_mb": prefix_cache_mb,
            "prefix_ttl_s": prefix_ttl,
            "host": host,
            "port": port,
            "port_file": port_file,
            "allowed_hosts": tuple(allowed_host) if allowed_host else None,
            "max_outstanding": max_outstanding,
            "max_queue": max_queue,
            "queue_timeout_s": queue_timeout,
            "timeout_s": timeout,
            "connect_timeout_s": connect_timeout,
            "first_byte_timeout_s": first_byte_timeout,
            "stream_idle_timeout_s": stream_idle_timeout,
            "client_write_timeout_s": client_write_timeout,
            "retries": retries,
            "retry_lost": retry_lost,
            "retry_budget_percent": retry_budget,
            "retry_budget_min": retry_budget_min,
            "health_interval_s": health_interval,
            "health_timeout_s": health_timeout,
            "health_path": health_path,
            "eject_after": eject_after,
            "readmit_after": readmit_after,
            "max_fails": max_fails,
            "fail_timeout_s": fail_timeout,
            "max_ejection_percent": max_ejection_percent,
            "sticky_header": sticky_header,
            "admin_token": admin_token,
            "admin_token_file": admin_token_file,
            "allowed_upstreams": tuple(allow_upstream) if allow_upstream else None,
            "forward_auth": forward_auth,
            "admin_port": admin_port,
            "admin_host": admin_host,
            "max_body_mb": max_body_mb,
            "max_header_kb": max_header_kb,
            "drain_timeout_s": drain_timeout,
            "log_level": log_level,
            "batch_share_percent": batch_share,
            "batch_store": batch_store,
            "batch_max_file_mb": batch_max_file_mb,
            "batch_max_lines": batch_max_lines,
            "batch_max_store_gb": batch_max_store_gb,
            "batch_retention_h": batch_retention_h,
            "batch_max_in_flight": batch_max_in_flight,
        }
        cfg = load(RouterConfig, "router", flags=flags, config_path=config).with_token_file()
        RouterState(cfg)  # parses --worker and --route values: errors exit 2 here
    setup_logging(cfg.log_level, name="gpufleet-router")
    if admin_token is not None:
        logging.getLogger("gpufleet.router").warning(
            "--admin-token on the command line is visible to every local user (ps, "
            "/proc/PID/cmdline): use GPUFLEET_ADMIN_TOKEN or --admin-token-file"
        )
    from gpufleet.router.main import serve

    extensions = []
    if cfg.batch_store is not None:
        from gpufleet.batches import extension

        extensions.append(extension(cfg))
    with config_errors_exit():  # the port taken: one line, exit 2
        run_async(serve(cfg, extensions=tuple(extensions)))


def register(app: typer.Typer) -> None:
    """Add this part's commands to ``app``."""
    app.command()(router)
