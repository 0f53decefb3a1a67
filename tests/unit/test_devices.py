"""GPU discovery, the inherited CUDA_VISIBLE_DEVICES mask and --gpus selection."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from gpufleet.errors import ConfigError
from gpufleet.fleet.devices import (
    DiscoveryUnavailable,
    Gpu,
    NvmlProbe,
    apply_mask,
    discover,
    parse_list_output,
    parse_query_output,
    select,
)

UUIDS = [f"GPU-{i}{i}{i}{i}aaaa-0000-1111-2222-33334444555{i}" for i in range(4)]
QUERY = "".join(f"{i}, {UUIDS[i]}, NVIDIA A100-SXM4-80GB, 81920 MiB\n" for i in range(4))


def four() -> list[Gpu]:
    return parse_query_output(QUERY)


def test_parse_query_output() -> None:
    gpus = four()
    assert [g.index for g in gpus] == [0, 1, 2, 3]
    assert gpus[2].uuid == UUIDS[2]
    assert gpus[0].name == "NVIDIA A100-SXM4-80GB"
    assert gpus[0].memory_mib == 81920
    assert [g.visible_devices for g in gpus] == ["0", "1", "2", "3"]


def test_parse_list_output_skips_mig() -> None:
    text = (
        f"GPU 0: NVIDIA H100 (UUID: {UUIDS[0]})\n"
        "  MIG 1g.10gb     Device  0: (UUID: MIG-abcd)\n"
        f"GPU 1: NVIDIA H100 (UUID: {UUIDS[1]})\n"
    )
    gpus = parse_list_output(text)
    assert [(g.index, g.uuid, g.name) for g in gpus] == [
        (0, UUIDS[0], "NVIDIA H100"),
        (1, UUIDS[1], "NVIDIA H100"),
    ]


def test_mask_limits_and_renumbers() -> None:
    seen = apply_mask(four(), "2,3")
    assert [(g.index, g.physical_index, g.visible_devices) for g in seen] == [
        (0, 2, "2"),
        (1, 3, "3"),
    ]
    # --gpus 1 inside that mask is physical GPU 3, as CUDA would number it.
    assert [g.visible_devices for g in select(seen, "1,")] == ["3"]


def test_mask_by_uuid_pins_by_uuid() -> None:
    seen = apply_mask(four(), f"{UUIDS[3]},{UUIDS[1][:12]}")
    assert [g.physical_index for g in seen] == [3, 1]
    assert [g.visible_devices for g in seen] == [UUIDS[3], UUIDS[1]]


@pytest.mark.parametrize(
    ("mask", "physical"),
    [("", []), ("-1", []), ("1,7,2", [1]), ("0,0", [0]), (None, [0, 1, 2, 3])],
)
def test_mask_stops_at_first_bad_entry(mask: str | None, physical: list[int]) -> None:
    assert [g.physical_index for g in apply_mask(four(), mask)] == physical


def test_select_forms() -> None:
    gpus = four()
    assert [g.index for g in select(gpus, "all")] == [0, 1, 2, 3]
    assert select(gpus, "none") == []
    assert [g.index for g in select(gpus, "2")] == [0, 1]
    assert [g.index for g in select(gpus, "1,3")] == [1, 3]
    assert [g.index for g in select(gpus, "3,")] == [3]
    assert [g.index for g in select(gpus, UUIDS[2][:9])] == [2]


@pytest.mark.parametrize(("spec", "needle"), [("5", "only 4"), ("0,9", "GPU 9 is not visible")])
def test_select_errors(spec: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        select(four(), spec)


@dataclass
class _Memory:
    total: int


class FakeNvml:
    """Stands in for pynvml: what NVML answers on a 2-GPU machine."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.shutdowns = 0

    def nvmlInit(self) -> None:
        if self.fail:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetUUID(self, h: int) -> bytes:
        return UUIDS[h].encode()

    def nvmlDeviceGetName(self, h: int) -> str:
        return "NVIDIA L4"

    def nvmlDeviceGetMemoryInfo(self, h: int) -> _Memory:
        return _Memory(total=24 * 1024**3)


class _Fixed:
    name = "fixed"

    def __init__(self, gpus: list[Gpu]) -> None:
        self.gpus = gpus

    def list_gpus(self) -> list[Gpu]:
        return self.gpus


def test_nvml_probe_reads_devices() -> None:
    nvml = FakeNvml()
    gpus = NvmlProbe(nvml).list_gpus()
    assert [(g.index, g.uuid, g.name, g.memory_mib) for g in gpus] == [
        (0, UUIDS[0], "NVIDIA L4", 24576),
        (1, UUIDS[1], "NVIDIA L4", 24576),
    ]
    assert nvml.shutdowns == 1


def test_discover_falls_back_and_applies_mask() -> None:
    found = discover([NvmlProbe(FakeNvml(fail=True)), _Fixed(four())], visible_devices="3")
    assert found.source == "fixed"
    assert [g.visible_devices for g in found.gpus] == ["3"]
    assert "NVML Shared Library Not Found" in found.notes[0]


def test_discover_nothing() -> None:
    with pytest.raises(DiscoveryUnavailable):
        NvmlProbe(FakeNvml(fail=True)).list_gpus()
    found = discover([NvmlProbe(FakeNvml(fail=True))])
    assert found.gpus == ()
    assert found.source == "none"
