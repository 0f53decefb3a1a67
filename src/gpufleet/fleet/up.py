"""``gpufleet up``: discover, plan, say what was chosen, supervise until stopped.

The CLI hands over the settings and the outside world (environment, working directory,
the Python to run children with); nothing here reads ``os.environ``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from gpufleet.config.fleet import FleetConfig
from gpufleet.errors import ConfigError
from gpufleet.fleet.devices import Discovery, default_probes, discover
from gpufleet.fleet.launcher import Launcher, LocalLauncher
from gpufleet.fleet.member import Member
from gpufleet.fleet.plan import FleetPlan, WorkerPlan, make_plan, router_spec
from gpufleet.fleet.process import ChildSpec
from gpufleet.fleet.rundir import RunDir
from gpufleet.fleet.supervisor import Output, RouterLaunch, Supervisor
from gpufleet.wire.states import MemberRole


def startup_lines(cfg: FleetConfig, plan: FleetPlan) -> list[str]:
    """What was found and chosen: GPUs, workers and ports, model or command, policy, logs."""
    found = plan.discovery
    lines = []
    if found.gpus:
        lines.append(f"gpufleet: {len(found.gpus)} GPU(s) found via {found.source}:")
        for g in found.gpus:
            memory = f", {g.memory_mib} MiB" if g.memory_mib else ""
            lines.append(f"  gpu{g.index}: {g.name}{memory} ({g.uuid})")
    else:
        why = "; ".join(found.notes) or "discovery is off"
        lines.append(f"gpufleet: no GPU found ({why})")
    if plan.on_cpu:
        lines.append(f"gpufleet: running {len(plan.workers)} CPU worker(s) (--cpu-workers)")
    by_pool: dict[str, list[WorkerPlan]] = {}
    for w in plan.workers:
        by_pool.setdefault(w.pool, []).append(w)
    prefixes = {pool: prefix for prefix, pool in plan.routes.items()}
    for pool, members in by_pool.items():
        where = f" at {prefixes[pool]}" if pool in prefixes else ""
        lines.append(f"gpufleet: pool {pool}{where}: {members[0].serves}")
        for w in members:
            cvd = w.spec.env.get("CUDA_VISIBLE_DEVICES") or "(none)"
            lines.append(
                f"  {w.device:<6} port {w.spec.port:<5} CUDA_VISIBLE_DEVICES={cvd:<8} "
                f"log {w.spec.log_path}"
            )
    policy = cfg.policy or "the router's default (prefix)"
    port = "a free port" if cfg.port == 0 else str(cfg.port)
    lines.append(f"gpufleet: router on {cfg.host}:{port}, policy {policy}")
    return lines


def ready_hint(cfg: FleetConfig, plan: FleetPlan) -> str:
    """A curl line that works against the endpoint once it is ready."""
    first = next((w for w in plan.workers if w.router_pool == "default"), plan.workers[0])
    prefix = next((p for p, pool in plan.routes.items() if pool == first.router_pool), "")
    if first.spec.argv[3:4] == ("worker",):
        body = '{"input": "hello"}'
        return (
            f"curl -s {{endpoint}}{prefix}/predict -H 'Content-Type: application/json' -d '{body}'"
        )
    return f"curl -s {{endpoint}}{prefix}{cfg.ready_path}"


def _members(plan: FleetPlan) -> list[Member]:
    return [
        Member(
            name=w.spec.name,
            role=MemberRole.WORKER,
            spec=w.spec,
            ready_path=w.ready_path,
            pool=w.pool,
            router_pool=w.router_pool,
            device=w.device,
            serves=w.serves,
        )
        for w in plan.workers
    ]


async def run_up(
    cfg: FleetConfig,
    *,
    env: Mapping[str, str],
    cwd: str,
    python: str = sys.executable,
    config_path: str | None = None,
    report: Callable[[str], None] = print,
    launcher: Launcher | None = None,
    discovery: Discovery | None = None,
    plan: FleetPlan | None = None,
    intro: Sequence[str] | None = None,
) -> int:
    """Run the fleet in this process until SIGINT/SIGTERM; the exit status.

    ``plan`` and ``intro`` (its start-up lines) come from another placement than local
    GPU discovery (``gpufleet up --ray``: see ``ray_cluster``).

    Raises:
        ConfigError: bad settings, a GPU that is not there, or the run directory is taken.
    """
    run_dir = RunDir(Path(cwd, cfg.run_dir))
    pid = os.getpid()
    run_dir.claim(pid)
    token_written = False
    try:
        if plan is None:
            if discovery is None:
                probes = default_probes(cfg.discovery, path=env.get("PATH"))
                visible = env.get("CUDA_VISIBLE_DEVICES")
                discovery = await asyncio.to_thread(discover, probes, visible_devices=visible)
            plan = make_plan(
                cfg, discovery, python=python, base_env=env, cwd=cwd, config_path=config_path
            )
        for line in startup_lines(cfg, plan) if intro is None else intro:
            report(line)
        # The router's admin token: the user's (GPUFLEET_ADMIN_TOKEN) or a fresh one, kept
        # in the run directory (owner-only, removed when `up` ends) so `bench --scaling`
        # and scripts can find it. The router gets it in its environment, never in argv.
        token = env.get("GPUFLEET_ADMIN_TOKEN") or secrets.token_urlsafe(24)
        token_written = True
        write_admin_token(run_dir.path, token)

        def make_router(ready: Sequence[Member], port: int) -> ChildSpec:
            return router_spec(
                cfg,
                plan,
                ready,
                python=python,
                base_env=env,
                cwd=cwd,
                port=port,
                port_file=run_dir.router_port_file,
                token=token,
                config_path=config_path,
            )

        router = Member(
            "router", MemberRole.ROUTER, make_router([], cfg.port), "/health", device="-"
        )
        started = time.time()

        def publish(state: dict[str, Any]) -> None:
            run_dir.write_state(
                {**state, "pid": pid, "started_at": started, "cwd": cwd, "log_dir": cfg.log_dir}
            )

        supervisor = Supervisor(
            cfg,
            _members(plan),
            router,
            launcher=launcher or LocalLauncher(),
            router_launch=RouterLaunch(
                spec=make_router,
                token=token,
                port_file=run_dir.router_port_file,
                endpoint_port_file=Path(cwd, cfg.port_file) if cfg.port_file else None,
            ),
            output=Output(publish=publish, report=report, ready_hint=ready_hint(cfg, plan)),
        )
        return await supervisor.run()
    finally:
        if token_written:
            remove_admin_token(run_dir.path)
        run_dir.release(pid)


__all__ = ["ready_hint", "run_up", "startup_lines"]


#: Where ``up`` keeps the router's admin token, under the run directory: a directory only
#: its owner may enter (0700), and in it a file only its owner may read (0600).
ADMIN_TOKEN_DIR = "private"
ADMIN_TOKEN_FILE = f"{ADMIN_TOKEN_DIR}/admin-token"


def _private_dir(run_dir: Path) -> int:
    """A descriptor of ``run_dir/private``, made 0700 if new; refused unless it is a real
    directory of ours (never a link).

    Raises:
        ConfigError: it is a link, not a directory, or another user's.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / ADMIN_TOKEN_DIR
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"{path} must be a directory (not a link): {exc}") from None
    info = os.fstat(fd)
    if info.st_uid != os.geteuid():
        os.close(fd)
        raise ConfigError(f"{path} belongs to another user (uid {info.st_uid})")
    os.fchmod(fd, 0o700)
    return fd


def write_admin_token(run_dir: Path, token: str) -> None:
    """Write the router's admin token to ``run_dir/private/admin-token`` (0600, in 0700).

    Never through a link: the old entry is removed (a link goes, not its target), then the
    file is created new (``O_EXCL|O_NOFOLLOW``).

    Raises:
        ConfigError: the private directory is not ours, or the file appeared meanwhile.
    """
    name = ADMIN_TOKEN_FILE.rsplit("/", 1)[1]
    dir_fd = _private_dir(run_dir)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dir_fd)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
        except FileExistsError:
            raise ConfigError(f"{run_dir / ADMIN_TOKEN_FILE} appeared while written") from None
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(token + "\n")
    finally:
        os.close(dir_fd)


def remove_admin_token(run_dir: Path) -> None:
    """Remove the admin token file (``up`` is over: the token means nothing any more)."""
    directory, name = ADMIN_TOKEN_FILE.rsplit("/", 1)
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    with contextlib.suppress(OSError):
        dir_fd = os.open(run_dir / directory, flags)
        try:
            os.unlink(name, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
