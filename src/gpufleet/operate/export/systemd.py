"""``gpufleet export systemd``: a unit that runs ``gpufleet up`` and keeps it running.

``up`` is the supervisor: it restarts workers, drains on SIGTERM and stops its children.
systemd only restarts ``up`` itself when it fails, sends SIGTERM to ``up`` alone
(``KillMode=mixed``) so that the drain happens in order, and gives it long enough for
both drain stages (router, then workers) before the SIGKILL that reaches every process
left in the unit's cgroup.
"""

from __future__ import annotations

import math
import re

from gpufleet.operate.export.layout import ExportLayout
from gpufleet.operate.export.options import ExportOptions, header

#: Seconds on top of the drain and kill budgets before systemd gives up on a stop.
STOP_MARGIN_S = 15


def _exec_arg(arg: str) -> str:
    """One ExecStart= word: quoted when it holds spaces or quotes; ``%`` and ``$`` escaped."""
    text = arg.replace("%", "%%").replace("$", "$$")
    if text and not re.search(r"[\s\"'\\;]", text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _env_line(key: str, value: str) -> str:
    value = value.replace("%", "%%").replace("\\", "\\\\").replace('"', '\\"')
    return f'Environment="{key}={value}"'


def stop_timeout_s(layout: ExportLayout) -> int:
    """TimeoutStopSec=: the router's drain, the workers' drain, the kill wait, a margin."""
    f = layout.fleet
    return math.ceil(2 * f.drain_timeout_s + f.kill_timeout_s) + STOP_MARGIN_S


def render_systemd(layout: ExportLayout, opts: ExportOptions) -> str:
    """The unit file's text (``/etc/systemd/system/<name>.service``)."""
    argv = [*opts.exe, "up"]
    if opts.config_path:
        argv += ["--config", opts.config_path]
    argv += [a for a in opts.up_args if a != "--detach"]
    env = dict(opts.env)
    env.setdefault("PYTHONUNBUFFERED", "1")
    if layout.fleet.detach:
        # A unit runs `up` in the foreground, whatever the file says.
        env["GPUFLEET_DETACH"] = "false"
    endpoint = f"{layout.fleet.host}:{layout.port}"
    lines = header(layout, opts)
    lines += [
        f"# Install: copy to /etc/systemd/system/{opts.name}.service, then",
        f"#   systemctl daemon-reload && systemctl enable --now {opts.name}",
        "",
        "[Unit]",
        f"Description=gpufleet: {layout.pools[0].serves} on every GPU behind {endpoint}",
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Service]",
        "Type=simple",
        f"WorkingDirectory={opts.workdir}",
        "ExecStart=" + " ".join(_exec_arg(a) for a in argv),
    ]
    lines += [_env_line(k, v) for k, v in sorted(env.items())]
    if opts.user:
        lines.append(f"User={opts.user}")
    lines += [
        "Restart=on-failure",
        "RestartSec=5",
        "# SIGTERM to `up` only: it drains the router, then the workers, then exits 0.",
        "KillMode=mixed",
        "KillSignal=SIGTERM",
        f"TimeoutStopSec={stop_timeout_s(layout)}",
        "LimitNOFILE=65536",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)


__all__ = ["STOP_MARGIN_S", "render_systemd", "stop_timeout_s"]
