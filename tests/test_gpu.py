"""core.gpu: the NVML probe against a fake NVML module, the catalog and simulated specs."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from core.errors import UserError
from core.gpu import CATALOG, find_model, parse_spec, probe, resolve
from core.units import GIB


class NVMLError(Exception):
    pass


class NVMLError_LibraryNotFound(NVMLError):  # noqa: N801 - NVML's own name
    pass


class NVMLError_NotSupported(NVMLError):  # noqa: N801
    pass


class FakeNvml:
    """The few pynvml functions the probe calls, answering from a list of device dicts."""

    def __init__(self, devices: list[dict[str, Any]], init_error: Exception | None = None) -> None:
        self.devices = devices
        self.init_error = init_error
        self.shutdown_calls = 0

    def nvmlInit(self) -> None:
        if self.init_error:
            raise self.init_error

    def nvmlShutdown(self) -> None:
        self.shutdown_calls += 1

    def nvmlSystemGetDriverVersion(self) -> str:
        return "550.54.15"

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return 12040

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> dict[str, Any]:
        return self.devices[i]

    def nvmlDeviceGetName(self, h: dict[str, Any]) -> str:
        return h["name"]

    def nvmlDeviceGetUUID(self, h: dict[str, Any]) -> str:
        return h["uuid"]

    def nvmlDeviceGetMemoryInfo(self, h: dict[str, Any]) -> SimpleNamespace:
        return SimpleNamespace(total=h["total"], free=h["total"] - h.get("used", 0), used=h.get("used", 0))

    def nvmlDeviceGetCudaComputeCapability(self, h: dict[str, Any]) -> tuple[int, int]:
        if "cc" not in h:
            raise NVMLError_NotSupported()
        return h["cc"]

    def nvmlDeviceGetUtilizationRates(self, h: dict[str, Any]) -> SimpleNamespace:
        if "util" not in h:
            raise NVMLError_NotSupported()
        return SimpleNamespace(gpu=h["util"], memory=0)

    def nvmlDeviceGetComputeRunningProcesses(self, h: dict[str, Any]) -> list[SimpleNamespace]:
        return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, _, used in h.get("procs", [])]

    def nvmlDeviceGetGraphicsRunningProcesses(self, h: dict[str, Any]) -> list[SimpleNamespace]:
        return []

    def nvmlSystemGetProcessName(self, pid: int) -> bytes:
        for device in self.devices:
            for p, name, _ in device.get("procs", []):
                if p == pid:
                    return name.encode()
        raise NVMLError("not found")

    def nvmlDeviceGetMigMode(self, h: dict[str, Any]) -> tuple[int, int]:
        if "mig" not in h:
            raise NVMLError_NotSupported()
        return (1, 1)

    def nvmlDeviceGetMaxMigDeviceCount(self, h: dict[str, Any]) -> int:
        return 7

    def nvmlDeviceGetMigDeviceHandleByIndex(self, h: dict[str, Any], slot: int) -> dict[str, Any]:
        if slot >= len(h["mig"]):
            raise NVMLError("NotFound")
        return h["mig"][slot]


def gpu(name: str = "NVIDIA GeForce RTX 4090", total_gib: float = 24, uuid: str = "GPU-aaaa", **kw: Any) -> dict[str, Any]:
    return {"name": name, "total": int(total_gib * GIB), "uuid": uuid, "cc": (8, 9), "util": 3, **kw}


@pytest.fixture(autouse=True)
def no_visible_devices_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_no_library_gives_empty_set_with_reason_and_never_raises() -> None:
    found = probe(FakeNvml([], init_error=NVMLError_LibraryNotFound()))
    assert found.count == 0 and found.smallest is None
    assert "no NVIDIA driver" in found.reason


def test_real_pynvml_on_this_machine_never_raises() -> None:
    found = probe()
    assert found.count > 0 or found.reason


def test_zero_gpus_reports_why() -> None:
    fake = FakeNvml([])
    found = probe(fake)
    assert found.count == 0 and "no GPU" in found.reason
    assert fake.shutdown_calls == 1


def test_two_gpus_with_details_and_catalog_match() -> None:
    fake = FakeNvml([gpu(uuid="GPU-a1", used=2 * GIB), gpu("NVIDIA A100-SXM4-40GB", 40, "GPU-b2", cc=(8, 0))])
    found = probe(fake)
    assert found.count == 2 and found.reason is None and not found.simulated
    first, second = found.gpus
    assert (first.index, first.vram_gb, first.vram_free_gb) == (0, 24, 22)
    assert first.driver == "550.54.15" and first.cuda_version == "12.4" and first.utilization == 3
    assert first.bf16 and first.model.key == "4090" and first.tflops("bf16") == pytest.approx(165.2)
    assert second.model.key == "a100-40gb" and second.compute_capability == (8, 0)
    assert found.smallest is first


def test_old_gpu_has_no_bf16_and_bf16_runs_at_fp16_speed() -> None:
    found = probe(FakeNvml([gpu("Tesla T4", 15, cc=(7, 5))]))
    t4 = found.gpus[0]
    assert not t4.bf16 and t4.tflops_bf16 == 0 and t4.tflops("bf16") == t4.tflops_fp16 == 65


def test_unknown_gpu_falls_back_to_architecture_speed() -> None:
    found = probe(FakeNvml([gpu("NVIDIA Mystery 9000", 20, cc=(9, 0))]))
    mystery = found.gpus[0]
    assert mystery.model is None and mystery.tflops("bf16") > 100


def test_processes_holding_vram_are_listed() -> None:
    fake = FakeNvml([gpu(used=5 * GIB, procs=[(4242, "/usr/bin/python3", 5 * GIB)])])
    proc = probe(fake).gpus[0].processes[0]
    assert (proc.pid, proc.name, proc.used_bytes) == (4242, "python3", 5 * GIB)


def test_cuda_visible_devices_by_index_renumbers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,0")
    fake = FakeNvml([gpu(uuid="GPU-a"), gpu(uuid="GPU-b"), gpu("NVIDIA H100 80GB HBM3", 80, "GPU-c", cc=(9, 0))])
    found = probe(fake)
    assert [(g.index, g.nvml_index, g.uuid) for g in found.gpus] == [(0, 2, "GPU-c"), (1, 0, "GPU-a")]


def test_cuda_visible_devices_by_uuid_prefix_and_stops_at_bad_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-b,7,0")
    found = probe(FakeNvml([gpu(uuid="GPU-a1"), gpu(uuid="GPU-b2")]))
    assert [g.uuid for g in found.gpus] == ["GPU-b2"]


@pytest.mark.parametrize("value", ["", "-1", "9"])
def test_cuda_visible_devices_hiding_everything_says_so(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    found = probe(FakeNvml([gpu()]))
    assert found.count == 0 and "CUDA_VISIBLE_DEVICES" in found.reason


def test_mig_instances_are_devices_of_their_own() -> None:
    instances = [
        {"name": "NVIDIA A100-SXM4-80GB MIG 3g.40gb", "total": 40 * GIB, "uuid": "MIG-1111"},
        {"name": "NVIDIA A100-SXM4-80GB MIG 3g.40gb", "total": 40 * GIB, "uuid": "MIG-2222"},
    ]
    found = probe(FakeNvml([gpu("NVIDIA A100-SXM4-80GB", 80, cc=(8, 0), mig=instances)]))
    assert [g.uuid for g in found.gpus] == ["MIG-1111", "MIG-2222"]
    assert all(g.mig and g.bf16 and g.vram_gb == 40 and g.model.key == "a100-80gb" for g in found.gpus)
    assert "MIG" in found.notes[0]


def test_mig_without_instances_explains() -> None:
    found = probe(FakeNvml([gpu("NVIDIA A100-SXM4-80GB", 80, cc=(8, 0), mig=[])]))
    assert found.count == 0 and "MIG mode without instances" in found.reason


def test_mig_instance_selected_by_uuid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-2222")
    instances = [{"name": "MIG 1g.10gb", "total": 10 * GIB, "uuid": "MIG-1111"}, {"name": "MIG 1g.10gb", "total": 10 * GIB, "uuid": "MIG-2222"}]
    found = probe(FakeNvml([gpu("NVIDIA A100-SXM4-80GB", 80, cc=(8, 0), mig=instances)]))
    assert [g.uuid for g in found.gpus] == ["MIG-2222"]


def test_catalog_covers_common_training_gpus() -> None:
    for spec in ["T4", "V100-16GB", "V100-32GB", "2080Ti", "3060", "3090", "4060Ti", "4090", "5090", "A10", "A6000", "L4", "L40S", "A100-40GB", "A100-80GB", "H100", "H200"]:
        model = find_model(spec)
        assert model is not None, spec
        assert model.tflops_fp16 > 0 and model.bandwidth_gbs > 0
        assert model.bf16 == (model.compute_capability >= (8, 0)) == (model.tflops_bf16 > 0)
    assert CATALOG["h100"].tflops_bf16 > CATALOG["a100-80gb"].tflops_bf16 > CATALOG["3090"].tflops_bf16


@pytest.mark.parametrize(
    ("spec", "count", "vram_gb", "model"),
    [
        ("2x4090", 2, 24, "4090"),
        ("1x24GB", 1, 24, None),
        ("8xH100", 8, 80, "h100"),
        ("4xA100-80GB", 4, 80, "a100-80gb"),
        ("1xT4", 1, 16, "t4"),
        ("4090", 1, 24, "4090"),
        ("2X a100-40gb", 2, 40, "a100-40gb"),
        ("3 x 48gb", 3, 48, None),
    ],
)
def test_parse_spec(spec: str, count: int, vram_gb: float, model: str | None) -> None:
    found = parse_spec(spec)
    assert found.simulated and found.count == count and found.reason is None
    assert all(g.simulated and g.vram_gb == vram_gb for g in found.gpus)
    assert [g.index for g in found.gpus] == list(range(count))
    assert (found.gpus[0].model.key if found.gpus[0].model else None) == model


@pytest.mark.parametrize("spec", ["", "0x4090", "2xfoo", "5000GB", "2x"])
def test_bad_spec_lists_accepted_forms(spec: str) -> None:
    with pytest.raises(UserError, match="2x4090, 1x24GB, 8xH100"):
        parse_spec(spec)


def test_resolve_auto_probes_and_spec_simulates() -> None:
    assert not resolve("auto").simulated
    assert not resolve(None).simulated
    assert resolve("2x3090").count == 2


@pytest.mark.parametrize(
    ("name", "vram_gb", "key"),
    [
        ("NVIDIA GeForce RTX 4090", None, "4090"),
        ("Tesla T4", None, "t4"),
        ("NVIDIA A100-SXM4-40GB", None, "a100-40gb"),
        ("NVIDIA A100-SXM4", 79.2, "a100-80gb"),
        ("NVIDIA A100-PCIE", 39.4, "a100-40gb"),
        ("NVIDIA L40", None, "l40"),
        ("NVIDIA L40S", None, "l40s"),
        ("NVIDIA L4", None, "l4"),
        ("NVIDIA A10G", None, "a10"),
        ("NVIDIA RTX A6000", None, "a6000"),
        ("NVIDIA RTX 6000 Ada Generation", None, "6000ada"),
        ("NVIDIA H100 80GB HBM3", None, "h100"),
        ("NVIDIA H100 PCIe", None, "h100-pcie"),
        ("Tesla V100-SXM2-32GB", None, "v100-32gb"),
        ("NVIDIA GeForce RTX 2080 Ti", None, "2080ti"),
        ("NVIDIA Quadro P5000", None, None),
    ],
)
def test_nvml_names_match_the_catalog(name: str, vram_gb: float | None, key: str | None) -> None:
    model = find_model(name, vram_gb)
    assert (model.key if model else None) == key
