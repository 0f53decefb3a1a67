"""The GPU inventory: discovery (NVML, else ``nvidia-smi``), the inherited mask, selection.

CUDA numbers devices inside ``CUDA_VISIBLE_DEVICES``: with ``2,3`` inherited, what the
process calls GPU 0 is physical GPU 2. gpufleet sees the same way, so ``--gpus 1`` under
that mask is physical GPU 3, and the child started for it gets ``CUDA_VISIBLE_DEVICES=3``
(or the UUID, when the mask named UUIDs). Children also get ``CUDA_DEVICE_ORDER=PCI_BUS_ID``
so that an index means what ``nvidia-smi`` printed, not CUDA's "fastest first" order.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from gpufleet.errors import ConfigError, DiscoveryUnavailable


@dataclass(frozen=True, slots=True)
class Gpu:
    """One GPU as this process sees it."""

    #: Index as seen by this process (renumbered inside the inherited mask).
    index: int
    #: Index in the machine's (PCI bus) order, as ``nvidia-smi`` prints it.
    physical_index: int
    uuid: str
    name: str
    memory_mib: int | None = None
    #: Pin children by UUID rather than index (the inherited mask used UUIDs).
    pin_by_uuid: bool = False

    @property
    def visible_devices(self) -> str:
        """The ``CUDA_VISIBLE_DEVICES`` value that shows a child exactly this GPU."""
        return self.uuid if self.pin_by_uuid else str(self.physical_index)


class GpuProbe(Protocol):
    """A way to list the machine's GPUs (the seam tests replace)."""

    name: str

    def list_gpus(self) -> list[Gpu]:
        """Every GPU of the machine, in physical order; raises DiscoveryUnavailable."""
        ...


class NvmlProbe:
    """Discovery through NVML (the ``nvidia-ml-py`` package)."""

    name = "NVML"

    def __init__(self, nvml: Any | None = None) -> None:
        self._nvml = nvml

    def list_gpus(self) -> list[Gpu]:
        nvml: Any = self._nvml
        if nvml is None:
            try:
                import pynvml
            except ImportError as exc:
                raise DiscoveryUnavailable("nvidia-ml-py is not installed") from exc
            nvml = pynvml
        try:
            nvml.nvmlInit()
        except Exception as exc:  # pynvml raises its own NVMLError_* classes
            raise DiscoveryUnavailable(str(exc) or type(exc).__name__) from exc
        try:
            gpus = []
            for i in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(i)
                uuid, name = nvml.nvmlDeviceGetUUID(handle), nvml.nvmlDeviceGetName(handle)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle).total // (1024 * 1024)
                gpus.append(Gpu(i, i, _text(uuid), _text(name), int(memory)))
            return gpus
        finally:
            nvml.nvmlShutdown()


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class NvidiaSmiProbe:
    """Discovery through the ``nvidia-smi`` executable found on ``path``."""

    name = "nvidia-smi"

    def __init__(self, path: str | None = None, timeout_s: float = 15.0) -> None:
        self._path = path
        self._timeout_s = timeout_s

    def _run(self, exe: str, *args: str) -> str | None:
        try:
            done = subprocess.run(
                [exe, *args], capture_output=True, text=True, timeout=self._timeout_s, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DiscoveryUnavailable(f"nvidia-smi failed: {exc}") from exc
        return done.stdout if done.returncode == 0 else None

    def list_gpus(self) -> list[Gpu]:
        exe = shutil.which("nvidia-smi", path=self._path)
        if exe is None:
            raise DiscoveryUnavailable("nvidia-smi is not on PATH")
        query = "--query-gpu=index,uuid,name,memory.total"
        out = self._run(exe, query, "--format=csv,noheader")
        if out is not None:
            return parse_query_output(out)
        out = self._run(exe, "-L")
        if out is None:
            raise DiscoveryUnavailable("nvidia-smi answered with an error (driver not loaded?)")
        return parse_list_output(out)


def parse_query_output(text: str) -> list[Gpu]:
    """Parse ``nvidia-smi --query-gpu=index,uuid,name,memory.total --format=csv,noheader``."""
    gpus = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 4 or not parts[0].isdigit():
            continue
        index, uuid, name = int(parts[0]), parts[1], ",".join(parts[2:-1])
        memory = parts[-1].split()[0] if parts[-1] else ""
        gpus.append(Gpu(index, index, uuid, name, int(memory) if memory.isdigit() else None))
    return gpus


def parse_list_output(text: str) -> list[Gpu]:
    """Parse ``nvidia-smi -L``: ``GPU 0: NVIDIA A100 (UUID: GPU-…)``; MIG lines are skipped."""
    gpus = []
    for line in text.splitlines():
        head, sep, rest = line.strip().partition(":")
        if not sep or not head.startswith("GPU ") or not head[4:].isdigit():
            continue
        name, _, uuid_part = rest.rpartition("(UUID:")
        index = int(head[4:])
        gpus.append(Gpu(index, index, uuid_part.strip(" )"), name.strip()))
    return gpus


@dataclass(frozen=True, slots=True)
class Discovery:
    """What discovery found, and how (for the start-up lines)."""

    gpus: tuple[Gpu, ...]
    source: str
    notes: tuple[str, ...] = ()


def discover(probes: Sequence[GpuProbe], *, visible_devices: str | None = None) -> Discovery:
    """Ask each probe in turn; the first that can run wins. Then apply the inherited mask."""
    notes = []
    for probe in probes:
        try:
            found = probe.list_gpus()
        except DiscoveryUnavailable as exc:
            notes.append(f"{probe.name}: {exc}")
            continue
        return Discovery(tuple(apply_mask(found, visible_devices)), probe.name, tuple(notes))
    return Discovery((), "none", tuple(notes))


def apply_mask(gpus: Sequence[Gpu], mask: str | None) -> list[Gpu]:
    """Limit and renumber ``gpus`` by an inherited ``CUDA_VISIBLE_DEVICES``, as CUDA does.

    Like CUDA, parsing stops at the first entry that names no device.
    """
    if mask is None:
        return list(gpus)
    seen: list[Gpu] = []
    for raw in mask.split(","):
        entry = raw.strip()
        gpu = _find(gpus, entry)
        if gpu is None or any(g.physical_index == gpu.physical_index for g in seen):
            break
        by_uuid = not entry.isdigit()
        seen.append(dataclasses.replace(gpu, index=len(seen), pin_by_uuid=by_uuid))
    return seen


def _find(gpus: Sequence[Gpu], entry: str) -> Gpu | None:
    if not entry:
        return None
    if entry.isdigit():
        return next((g for g in gpus if g.physical_index == int(entry)), None)
    key = entry if entry.startswith(("GPU-", "MIG-")) else f"GPU-{entry}"
    matches = [g for g in gpus if g.uuid.startswith(key)]
    return matches[0] if len(matches) == 1 else None


def select(gpus: Sequence[Gpu], spec: str) -> list[Gpu]:
    """Pick GPUs by ``all``, ``none``, a count ``N``, or a list of indices / UUIDs.

    Raises:
        ConfigError: the selection names a GPU that is not visible, or more than there are.
    """
    spec = spec.strip()
    if spec == "all":
        return list(gpus)
    if spec == "none":
        return []
    if spec.isdigit():
        count = int(spec)
        if count > len(gpus):
            raise ConfigError(f"--gpus {count}: only {len(gpus)} GPU(s) visible")
        return list(gpus[:count])
    chosen: list[Gpu] = []
    for entry in (e.strip() for e in spec.split(",") if e.strip()):
        if entry.isdigit():
            gpu = next((g for g in gpus if g.index == int(entry)), None)
        else:
            key = entry if entry.startswith(("GPU-", "MIG-")) else f"GPU-{entry}"
            found = [g for g in gpus if g.uuid.startswith(key)]
            gpu = found[0] if len(found) == 1 else None
        if gpu is None:
            visible = ", ".join(str(g.index) for g in gpus) or "none"
            raise ConfigError(f"GPU {entry} is not visible (visible: {visible})")
        if gpu not in chosen:
            chosen.append(gpu)
    return chosen


def default_probes(method: str, *, path: str | None) -> list[GpuProbe]:
    """The probes for a ``discovery`` setting: ``auto``, ``nvml``, ``nvidia-smi`` or ``none``."""
    probes: dict[str, list[GpuProbe]] = {
        "auto": [NvmlProbe(), NvidiaSmiProbe(path)],
        "nvml": [NvmlProbe()],
        "nvidia-smi": [NvidiaSmiProbe(path)],
        "none": [],
    }
    return probes[method]


__all__ = [
    "Discovery",
    "DiscoveryUnavailable",
    "Gpu",
    "GpuProbe",
    "NvidiaSmiProbe",
    "NvmlProbe",
    "apply_mask",
    "default_probes",
    "discover",
    "parse_list_output",
    "parse_query_output",
    "select",
]
