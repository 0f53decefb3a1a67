"""``gpufleet export slurm``: an sbatch script, one worker per allocated GPU on every node.

The batch script runs on the job's first node. It expands ``SLURM_JOB_NODELIST``
(``scontrol show hostnames``), starts one ``srun`` step per node, and each step starts
one worker per GPU of its node: the step's ``CUDA_VISIBLE_DEVICES`` (what Slurm bound to
it), else ``0 … SLURM_GPUS_ON_NODE-1``; each worker is pinned to its one GPU by
``CUDA_VISIBLE_DEVICES``, as ``up`` pins. The router then runs on the first node with
every worker's URL. The router's list is computed on the first node, so the nodes are
assumed alike (the same GPUs each), which is what ``--nodes=N --gres=gpu:G`` gives.

Pools keep their meaning per node: ``gpus: all`` takes every GPU of the node, ``2`` the
first two, ``0,1`` / ``2,3`` those positions in the node's list. Ports count up from
``worker_base_port`` on every node.

``GPUFLEET_DRY_RUN=1`` prints each command line instead of running it (``NODE: …`` for
what would run on a node), which is how the tests check the script without Slurm.
"""

from __future__ import annotations

import re

from gpufleet.config.fleet import PoolConfig
from gpufleet.fleet.devices import Gpu
from gpufleet.operate.export.layout import ExportLayout, PoolLayout, Slot
from gpufleet.operate.export.options import ExportOptions, header

#: Workers on other nodes must be reachable from the router's node.
WORKER_HOST = "0.0.0.0"
_PORT, _GPU, _INDEX = "@@gpufleet-port@@", "@@gpufleet-gpu@@", "@@gpufleet-index@@"
_EXE, _ROUTER_HOST = "@@gpufleet-exe@@", "@@gpufleet-router-host@@"
_SHELL_VARS = {_PORT: "${port}", _GPU: "${gpu}", _INDEX: "${index}"}


def _dq(word: str) -> str:
    """``word`` in double quotes for bash, the placeholders turned into variables."""
    text = re.sub(r'([\\"$`])', r"\\\1", word)
    for sentinel, var in _SHELL_VARS.items():
        text = text.replace(sentinel, var)
    return f'"{text}"'


def _sq(word: str) -> str:
    return "'" + word.replace("'", "'\\''") + "'"


def _worker_case(pool: PoolLayout, opts: ExportOptions) -> list[str]:
    """The ``case`` arm that starts one worker of ``pool`` (``$port``, ``$gpu``, ``$index``)."""
    gpu_slot = Slot(pool.name, 0, Gpu(0, 0, "", ""), 0)
    argv = pool.worker_argv(
        gpu_slot,
        exe=(_EXE,),
        host=WORKER_HOST,
        config_path=opts.config_path,
        gpu_label=_GPU,
        port=_PORT,
        index=_INDEX,
    )
    words = ['"${exe[@]}"' if w == _EXE else _dq(w) for w in argv]
    if pool.config.cmd is None:
        words.append('"${cpu_flag[@]}"')
    return [
        f"        {_sq(pool.name)})",
        "            gpufleet_run env \\",
        '                CUDA_VISIBLE_DEVICES="$cvd" CUDA_DEVICE_ORDER=PCI_BUS_ID \\',
        "                " + " ".join(words) + " ;;",
    ]


def _plan_lines(pool: PoolConfig, router_pool: str) -> list[str]:
    """Bash that prints ``POOL ROUTER_POOL INDEX GPU PORT`` for each worker of ``pool``."""
    emit = f"gpufleet_emit {_sq(pool.name)} {_sq(router_pool)}"
    return [
        f'    mapfile -t chosen < <(gpufleet_select {_sq(pool.gpus or "all")} "${{gpus[@]}}")',
        "    index=0",
        '    for gpu in "${chosen[@]}"; do',
        f'        for _ in $(seq 1 {pool.workers_per_gpu or 1}); do {emit} "$gpu"; done',
        "    done",
        "    if (( ${#chosen[@]} == 0 )); then",
        f"        for _ in $(seq 1 {pool.cpu_workers or 0}); do {emit} cpu; done",
        "    fi",
    ]


_FUNCTIONS = r"""
gpufleet_run() {  # run one command line, or print it (GPUFLEET_DRY_RUN=1)
    if [[ "$GPUFLEET_DRY_RUN" == 1 ]]; then
        local line
        printf -v line '%q ' "$@"
        echo "${GPUFLEET_ON:+$GPUFLEET_ON: }${line% }"
    else
        "$@"
    fi
}

gpufleet_node_gpus() {  # this node's GPUs, one a line
    if [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
        tr ',' '\n' <<< "$CUDA_VISIBLE_DEVICES" | sed '/^$/d'
    elif [[ "${SLURM_GPUS_ON_NODE:-0}" =~ ^[0-9]+$ ]] && (( ${SLURM_GPUS_ON_NODE:-0} > 0 )); then
        seq 0 $(( SLURM_GPUS_ON_NODE - 1 ))
    fi
}

gpufleet_select() {  # SPEC GPU...: all | none | N (the first N) | positions "0,2," | UUIDs
    local spec="$1" entry
    shift
    case "$spec" in
        all) (( $# == 0 )) || printf '%s\n' "$@" ;;
        none) ;;
        *[!0-9]*)
            local -a given=("$@")
            for entry in ${spec//,/ }; do
                if [[ "$entry" =~ ^[0-9]+$ ]]; then
                    if (( entry >= ${#given[@]} )); then
                        echo "gpufleet: GPU $entry is not allocated on $(hostname)" >&2
                        return 1
                    fi
                    echo "${given[$entry]}"
                else
                    echo "$entry"
                fi
            done ;;
        *)
            if (( spec > $# )); then
                echo "gpufleet: $spec GPU(s) wanted, $# allocated on $(hostname)" >&2
                return 1
            fi
            (( spec == 0 )) || printf '%s\n' "${@:1:$spec}" ;;
    esac
}

gpufleet_emit() {  # POOL ROUTER_POOL GPU: print one worker line, take the next port
    if (( port == ROUTER_PORT )); then port=$(( port + 1 )); fi
    echo "$1 $2 $index $3 $port"
    index=$(( index + 1 ))
    port=$(( port + 1 ))
}
"""

_START = r"""
gpufleet_start_workers() {  # on one node (an srun step): start its workers, wait for them
    local pool rpool index gpu port
    while read -r pool rpool index gpu port; do
        if [[ "$GPUFLEET_DRY_RUN" == 1 ]]; then
            gpufleet_worker "$pool" "$index" "$gpu" "$port"
        else
            gpufleet_worker "$pool" "$index" "$gpu" "$port" &
        fi
    done < <(gpufleet_node_plan)
    wait
}
"""

_MAIN = r"""
if command -v scontrol >/dev/null 2>&1 && [[ -n "${SLURM_JOB_NODELIST:-}" ]]; then
    mapfile -t nodes < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
else
    IFS=, read -ra nodes <<< "${SLURM_JOB_NODELIST:-$(hostname)}"
fi
if (( ${#nodes[@]} == 0 )); then
    echo "gpufleet: no node in SLURM_JOB_NODELIST" >&2
    exit 2
fi
mapfile -t plan < <(gpufleet_node_plan)
if (( ${#plan[@]} == 0 )); then
    echo "gpufleet: no worker to start (no GPU allocated: sbatch --gres=gpu:N)" >&2
    exit 2
fi

export -f gpufleet_run gpufleet_node_gpus gpufleet_select gpufleet_emit
export -f gpufleet_node_plan gpufleet_worker gpufleet_start_workers
export GPUFLEET GPUFLEET_DRY_RUN WORKER_BASE_PORT ROUTER_PORT
gres=()
if [[ "${SLURM_GPUS_ON_NODE:-}" =~ ^[0-9]+$ ]] && (( SLURM_GPUS_ON_NODE > 0 )); then
    gres=(--gres="gpu:$SLURM_GPUS_ON_NODE")
fi
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT

router_workers=()
for node in "${nodes[@]}"; do
    gpufleet_run srun --nodes=1 --ntasks=1 --nodelist="$node" "${gres[@]}" \
        bash -c gpufleet_start_workers &
    if [[ "$GPUFLEET_DRY_RUN" == 1 ]]; then
        wait
        GPUFLEET_ON="$node" SLURMD_NODENAME="$node" gpufleet_start_workers
    fi
    for line in "${plan[@]}"; do
        read -r _ rpool _ _ port <<< "$line"
        url="http://$node:$port"
        if [[ "$rpool" == default ]]; then
            router_workers+=(--worker "$url")
        else
            router_workers+=(--worker "$rpool@$url")
        fi
    done
done

read -ra exe <<< "$GPUFLEET"
GPUFLEET_ON="${nodes[0]}" gpufleet_run """


def _router_words(layout: ExportLayout, opts: ExportOptions) -> list[str]:
    argv = layout.router_argv(exe=(_EXE,), host=_ROUTER_HOST, urls=[], config_path=opts.config_path)
    port_at = argv.index("--port") + 1
    words = []
    for i, w in enumerate(argv):
        if w == _EXE:
            words.append('"${exe[@]}"')
        elif w == _ROUTER_HOST:
            words.append('"$ROUTER_HOST"')
        elif i == port_at:
            words.append('"$ROUTER_PORT"')
        else:
            words.append(_dq(w))
    return [*words, '"${router_workers[@]}"']


def gres_count(layout: ExportLayout) -> int:
    """GPUs per node the job asks for: enough for the highest GPU position a pool names."""
    return max((g.index + 1 for p in layout.pools for g in p.gpus), default=0)


def render_slurm(layout: ExportLayout, opts: ExportOptions) -> str:
    """The sbatch script's text."""
    base = layout.slots[0].port
    gpus = gres_count(layout)
    lines = ["#!/bin/bash", *header(layout, opts)]
    lines += [
        f"#SBATCH --job-name={opts.name}",
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --output=%x-%j.log",
    ]
    if gpus:
        lines.append(f"#SBATCH --gres=gpu:{gpus}")
    else:
        lines += ["# No GPU count was given (--gpus N): set it here.", "##SBATCH --gres=gpu:4"]
    lines += [
        "#",
        "# sbatch --nodes=N this.sh: one worker per allocated GPU on every node, the router on",
        "# the first. GPUFLEET (how a node runs gpufleet) defaults to `gpufleet` on PATH, e.g.",
        "# GPUFLEET='/shared/venv/bin/python -m gpufleet'. GPUFLEET_DRY_RUN=1: print, run nothing.",
        "set -euo pipefail",
        "",
        f'GPUFLEET="${{GPUFLEET:-{" ".join(opts.exe)}}}"',
        'GPUFLEET_DRY_RUN="${GPUFLEET_DRY_RUN:-0}"',
        f"WORKER_BASE_PORT={base}",
        f"ROUTER_PORT={layout.port}",
        "# The router's address on the first node: 0.0.0.0 to reach it from other machines.",
        f'ROUTER_HOST="${{GPUFLEET_ROUTER_HOST:-{layout.fleet.host}}}"',
    ]
    lines += _FUNCTIONS.splitlines()
    lines += [
        "gpufleet_node_plan() {  # this node's workers: POOL ROUTER_POOL INDEX GPU PORT",
        "    local -a gpus chosen",
        "    local gpu index _",
        "    local port=$WORKER_BASE_PORT",
        "    mapfile -t gpus < <(gpufleet_node_gpus)",
    ]
    for pool in layout.pools:
        lines += _plan_lines(pool.config, pool.router_pool)
    lines += ["}", ""]
    lines += [
        "gpufleet_worker() {  # POOL INDEX GPU PORT: one worker, pinned to its GPU",
        '    local pool="$1" index="$2" gpu="$3" port="$4" cvd="$3"',
        "    local -a exe cpu_flag=()",
        '    read -ra exe <<< "$GPUFLEET"',
        '    if [[ "$gpu" == cpu ]]; then cvd=""; cpu_flag=(--device cpu); fi',
        '    case "$pool" in',
    ]
    for pool in layout.pools:
        lines += _worker_case(pool, opts)
    lines += ["    esac", "}"]
    lines += _START.splitlines()
    main = _MAIN.splitlines()
    main[-1] += " ".join(_router_words(layout, opts))
    lines += main
    lines.append("")
    return "\n".join(lines)


__all__ = ["WORKER_HOST", "gres_count", "render_slurm"]
