"""GPUs: the NVML probe, a catalog of common training GPUs, and simulated hardware specs.

``probe()`` asks NVML (import name ``pynvml``, from the nvidia-ml-py distribution) what is
installed and never raises: without a usable GPU the returned ``GpuSet`` is empty and its
``reason`` says why. ``parse_spec("2x4090")`` builds simulated GPUs for planning on hardware
that is not there; ``resolve(spec)`` does either.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from types import ModuleType
from typing import Any

from core.errors import UserError
from core.units import GIB


@dataclass(frozen=True)
class GpuModel:
    """A catalog entry: marketed VRAM, bf16 support, dense tensor TFLOP/s and memory bandwidth."""

    key: str
    name: str
    vram_gb: float
    bf16: bool
    tflops_bf16: float
    tflops_fp16: float
    bandwidth_gbs: float
    compute_capability: tuple[int, int]
    match: str
    aliases: tuple[str, ...] = ()


def _m(key: str, name: str, vram: float, cc: tuple[int, int], bf16: float, fp16: float, bw: float, match: str, *aliases: str) -> GpuModel:
    return GpuModel(key, name, vram, cc >= (8, 0), bf16, fp16, bw, cc, match, aliases)


# Dense (non-sparse) tensor-core TFLOP/s with fp32 accumulation, as training runs them, from the
# vendor datasheets and architecture whitepapers: NVIDIA Turing (2080 Ti: 53.8 at reference
# clocks), Ampere GA102 (3090: 71; 3060: 25.6; 3080: 59.5), Ada (4090: 165.2; 4080: 97.5;
# 4060 Ti: 44.2; RTX 6000 Ada: 364.2), RTX Blackwell (5090: 209.5) whitepapers; T4 (65 mixed
# precision), V100 SXM2 (125), A10 (125), A40 (149.7), RTX A6000 (154.8), L4 (121), L40
# (181), L40S (362), A100 (312), H100 SXM (989), H100 PCIe (756), H200 (989), B200 (2250) datasheets, whose
# "with sparsity" figures are halved here. bf16 is 0 where the GPU has no bf16 (compute
# capability below 8.0). Bandwidth in GB/s from the same datasheets.
_MODELS: tuple[GpuModel, ...] = (
    _m("t4", "Tesla T4", 16, (7, 5), 0, 65, 320, "t4"),
    _m("v100-16gb", "V100 16GB", 16, (7, 0), 0, 125, 900, "v100"),
    _m("v100-32gb", "V100 32GB", 32, (7, 0), 0, 125, 900, "v100"),
    _m("2080ti", "GeForce RTX 2080 Ti", 11, (7, 5), 0, 53.8, 616, "2080ti", "rtx2080ti"),
    _m("3060", "GeForce RTX 3060 12GB", 12, (8, 6), 25.6, 25.6, 360, "3060", "rtx3060", "3060-12gb"),
    _m("3080", "GeForce RTX 3080", 10, (8, 6), 59.5, 59.5, 760, "3080", "rtx3080"),
    _m("3090", "GeForce RTX 3090", 24, (8, 6), 71, 71, 936, "3090", "rtx3090"),
    _m("4060ti-16gb", "GeForce RTX 4060 Ti 16GB", 16, (8, 9), 44.2, 44.2, 288, "4060ti", "rtx4060ti"),
    _m("4080", "GeForce RTX 4080", 16, (8, 9), 97.5, 97.5, 717, "4080", "rtx4080"),
    _m("4090", "GeForce RTX 4090", 24, (8, 9), 165.2, 165.2, 1008, "4090", "rtx4090"),
    _m("5090", "GeForce RTX 5090", 32, (12, 0), 209.5, 209.5, 1792, "5090", "rtx5090"),
    _m("a10", "A10", 24, (8, 6), 125, 125, 600, "a10", "a10g"),
    _m("a40", "A40", 48, (8, 6), 149.7, 149.7, 696, "a40"),
    _m("a6000", "RTX A6000", 48, (8, 6), 154.8, 154.8, 768, "a6000", "rtxa6000"),
    _m("6000ada", "RTX 6000 Ada", 48, (8, 9), 364.2, 364.2, 960, "6000ada", "rtx6000ada"),
    _m("l4", "L4", 24, (8, 9), 121, 121, 300, "l4"),
    _m("l40", "L40", 48, (8, 9), 181, 181, 864, "l40"),
    _m("l40s", "L40S", 48, (8, 9), 362, 362, 864, "l40s"),
    _m("a100-80gb", "A100 80GB", 80, (8, 0), 312, 312, 2039, "a100"),
    _m("a100-40gb", "A100 40GB", 40, (8, 0), 312, 312, 1555, "a100"),
    _m("h100", "H100 80GB SXM", 80, (9, 0), 989, 989, 3350, "h100", "h100-sxm", "h100-80gb"),
    _m("h100-pcie", "H100 80GB PCIe", 80, (9, 0), 756, 756, 2000, "h100pcie"),
    _m("h200", "H200", 141, (9, 0), 989, 989, 4800, "h200", "h200-141gb"),
    _m("b200", "B200", 180, (10, 0), 2250, 2250, 8000, "b200"),
)

#: Catalog key -> model. Order matters where one base name has several sizes: the first is
#: what a spec without a size means (``A100`` = 80GB, ``V100`` = 16GB).
CATALOG: dict[str, GpuModel] = {m.key: m for m in _MODELS}

#: Rough dense fp16 tensor TFLOP/s by compute capability, for GPUs not in the catalog.
_FALLBACK_TFLOPS = {(7, 0): 100.0, (7, 5): 50.0, (8, 0): 300.0, (8, 6): 60.0, (8, 7): 20.0, (8, 9): 100.0, (9, 0): 750.0, (10, 0): 2000.0, (12, 0): 150.0}
#: A GPU known only by its VRAM (``1x24GB``) or of unknown architecture: a mid-range card.
_UNKNOWN_TFLOPS = 80.0
_NOISE = ("nvidia", "geforce", "tesla", "quadro")


def _compact(text: str) -> str:
    """Lower case, vendor words dropped, only letters and digits kept."""
    text = text.lower()
    for word in _NOISE:
        text = text.replace(word, "")
    return re.sub(r"[^a-z0-9]", "", text)


def find_model(name: str, vram_gb: float | None = None) -> GpuModel | None:
    """The catalog model for a spec name or an NVML device name, or None if it is not known.

    Exact keys, names and aliases win; otherwise the longest base name found inside ``name``
    is used, choosing among its sizes by the size written in ``name`` or by ``vram_gb``.
    """
    compact = _compact(name)
    if not compact:
        return None
    for model in _MODELS:
        if compact in {_compact(model.key), _compact(model.name), *(_compact(a) for a in model.aliases)}:
            return model
    hits = [m for m in _MODELS if m.match in compact]
    if not hits:
        return None
    longest = max(len(m.match) for m in hits)
    hits = [m for m in hits if len(m.match) == longest]
    sized = re.search(r"(?<![\d.])(\d+)\s*gb", name.lower())
    wanted = float(sized.group(1)) if sized else vram_gb
    if wanted is None or len(hits) == 1:
        return hits[0]
    return min(hits, key=lambda m: abs(m.vram_gb - wanted))


def fallback_tflops(compute_capability: tuple[int, int] | None) -> float:
    """A rough dense fp16 TFLOP/s for a GPU not in the catalog, from its architecture."""
    if compute_capability is None:
        return _UNKNOWN_TFLOPS
    known = [cc for cc in _FALLBACK_TFLOPS if cc <= tuple(compute_capability)]
    return _FALLBACK_TFLOPS[max(known)] if known else _UNKNOWN_TFLOPS / 2


@dataclass
class GpuProcess:
    """A process holding memory on a GPU."""

    pid: int
    name: str
    used_bytes: int | None


@dataclass
class GpuInfo:
    """One GPU as CUDA will number it (probed or simulated)."""

    index: int
    name: str
    vram_total_bytes: int
    vram_free_bytes: int
    compute_capability: tuple[int, int] | None
    bf16: bool
    driver: str | None = None
    cuda_version: str | None = None
    uuid: str | None = None
    processes: list[GpuProcess] = field(default_factory=list)
    simulated: bool = False
    utilization: int | None = None
    model: GpuModel | None = None
    mig: bool = False
    nvml_index: int | None = None

    @property
    def vram_gb(self) -> float:
        """Total VRAM in GiB."""
        return self.vram_total_bytes / GIB

    @property
    def vram_free_gb(self) -> float:
        """Free VRAM in GiB."""
        return self.vram_free_bytes / GIB

    @property
    def tflops_fp16(self) -> float:
        """Dense fp16 tensor TFLOP/s: the catalog figure, else a guess from the architecture."""
        return self.model.tflops_fp16 if self.model else fallback_tflops(self.compute_capability)

    @property
    def tflops_bf16(self) -> float:
        """Dense bf16 tensor TFLOP/s (0 when the GPU has no bf16)."""
        if not self.bf16:
            return 0.0
        return self.model.tflops_bf16 if self.model and self.model.tflops_bf16 else self.tflops_fp16

    def tflops(self, mixed_precision: str = "bf16") -> float:
        """TFLOP/s for a run in ``mixed_precision`` (no, fp16, bf16); bf16 without support counts as fp16.

        fp32 training ("no") is taken as a quarter of the fp16 tensor rate.
        """
        if mixed_precision == "bf16" and self.bf16:
            return self.tflops_bf16
        if mixed_precision == "no":
            return self.tflops_fp16 / 4
        return self.tflops_fp16

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict of this GPU (sizes in bytes and GiB)."""
        data = asdict(self)
        data["model"] = self.model.key if self.model else None
        data["compute_capability"] = ".".join(map(str, self.compute_capability)) if self.compute_capability else None
        data["vram_gb"] = round(self.vram_gb, 2)
        data["vram_free_gb"] = round(self.vram_free_gb, 2)
        data["tflops_bf16"] = self.tflops_bf16
        data["tflops_fp16"] = self.tflops_fp16
        return data


@dataclass
class GpuSet:
    """The GPUs a run can use; empty with a ``reason`` when there are none."""

    gpus: list[GpuInfo]
    reason: str | None = None
    simulated: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        """How many GPUs."""
        return len(self.gpus)

    @property
    def smallest(self) -> GpuInfo | None:
        """The GPU with the least total VRAM (what every rank must fit in), or None."""
        return min(self.gpus, key=lambda g: g.vram_total_bytes, default=None)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: count, simulated, reason, notes and every GPU."""
        return {
            "count": self.count,
            "simulated": self.simulated,
            "reason": self.reason,
            "notes": list(self.notes),
            "gpus": [g.to_json() for g in self.gpus],
        }


# --- simulated hardware -------------------------------------------------------------------

_SPEC = re.compile(r"^\s*(?:(\d+)\s*[x×*]\s*)?(.+?)\s*$", re.IGNORECASE)
_VRAM = re.compile(r"^(\d+(?:\.\d+)?)\s*(?:gb|gib|g)$", re.IGNORECASE)


def _spec_error(spec: str, why: str) -> UserError:
    names = ", ".join(m.key.upper() for m in _MODELS[::3])
    return UserError(
        f"the GPU spec '{spec}' {why}; write COUNTxMODEL or COUNTxVRAM such as 2x4090, 1x24GB, 8xH100, "
        f"4xA100-80GB or T4 (the count is optional), with a model from the catalog ({names}, … see `sdtui gpus --catalog`)"
    )


def parse_spec(spec: str) -> GpuSet:
    """Simulated GPUs from a spec such as ``2x4090``, ``1x24GB``, ``8xH100``, ``4xA100-80GB`` or ``T4``."""
    match = _SPEC.match(spec or "")
    if not match or not match.group(2):
        raise _spec_error(spec, "is empty")
    count = int(match.group(1) or 1)
    if not 1 <= count <= 1024:
        raise _spec_error(spec, f"asks for {count} GPUs (1 to 1024 are allowed)")
    what = match.group(2)
    vram = _VRAM.match(what)
    if vram:
        gb = float(vram.group(1))
        if not 1 <= gb <= 2048:
            raise _spec_error(spec, f"gives {gb:g} GiB of VRAM (1 to 2048 are allowed)")
        gpus = [GpuInfo(i, f"GPU with {gb:g} GiB", int(gb * GIB), int(gb * GIB), None, True, simulated=True) for i in range(count)]
        return GpuSet(gpus, simulated=True)
    model = find_model(what)
    if model is None:
        raise _spec_error(spec, f"names an unknown GPU '{what}'")
    gpus = [GpuInfo(i, model.name, int(model.vram_gb * GIB), int(model.vram_gb * GIB), model.compute_capability, model.bf16, simulated=True, model=model) for i in range(count)]
    return GpuSet(gpus, simulated=True)


def resolve(spec: str | None) -> GpuSet:
    """The GPUs to plan for: probed when ``spec`` is None, empty or ``auto``, else simulated."""
    if spec is None or not spec.strip() or spec.strip().lower() == "auto":
        return probe()
    return parse_spec(spec)


# --- the NVML probe -----------------------------------------------------------------------

_NVML_REASONS = {
    "NVMLError_LibraryNotFound": "no NVIDIA driver was found (the NVML library libnvidia-ml could not be loaded)",
    "NVMLError_DriverNotLoaded": "the NVIDIA driver is installed but not loaded (check `nvidia-smi`; a reboot may help)",
    "NVMLError_NoPermission": "this user may not query the GPUs through NVML (check the /dev/nvidia* permissions)",
    "NVMLError_LibRmVersionMismatch": "the NVIDIA driver and its kernel module have different versions (reboot after a driver update)",
}


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _try(fn: Any, *args: Any, default: Any = None) -> Any:
    """Call an NVML function; return ``default`` on any NVML (or other) error."""
    try:
        return fn(*args)
    except Exception:  # noqa: BLE001 - any NVML (or other) error gives the default
        return default


def _processes(nvml: Any, handle: Any) -> list[GpuProcess]:
    seen: dict[int, GpuProcess] = {}
    for getter in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
        fn = getattr(nvml, getter, None)
        for proc in (_try(fn, handle, default=[]) if fn else []) or []:
            pid = int(proc.pid)
            used = getattr(proc, "usedGpuMemory", None)
            name = _try(nvml.nvmlSystemGetProcessName, pid, default="") if hasattr(nvml, "nvmlSystemGetProcessName") else ""
            seen.setdefault(pid, GpuProcess(pid, os.path.basename(_text(name)) if name else "?", int(used) if used else None))
    return list(seen.values())


def _device(nvml: Any, handle: Any, nvml_index: int, driver: str | None, cuda: str | None, mig: bool) -> GpuInfo:
    name = _text(_try(nvml.nvmlDeviceGetName, handle, default="unknown GPU"))
    memory = _try(nvml.nvmlDeviceGetMemoryInfo, handle)
    total = int(memory.total) if memory is not None else 0
    free = int(memory.free) if memory is not None else 0
    cc = _try(nvml.nvmlDeviceGetCudaComputeCapability, handle)
    cc = (int(cc[0]), int(cc[1])) if cc else None
    util = _try(nvml.nvmlDeviceGetUtilizationRates, handle)
    return GpuInfo(
        index=-1,
        name=name,
        vram_total_bytes=total,
        vram_free_bytes=free,
        compute_capability=cc,
        bf16=bool(cc and cc >= (8, 0)),
        driver=driver,
        cuda_version=cuda,
        uuid=_text(_try(nvml.nvmlDeviceGetUUID, handle, default="")) or None,
        processes=_processes(nvml, handle),
        utilization=int(util.gpu) if util is not None else None,
        model=find_model(name, total / GIB if total else None),
        mig=mig,
        nvml_index=nvml_index,
    )


def _mig_instances(nvml: Any, handle: Any, parent: GpuInfo) -> list[GpuInfo]:
    """The MIG instances of a GPU in MIG mode (each is a device of its own for CUDA)."""
    found = []
    for slot in range(_try(nvml.nvmlDeviceGetMaxMigDeviceCount, handle, default=0) or 0):
        mig_handle = _try(nvml.nvmlDeviceGetMigDeviceHandleByIndex, handle, slot)
        if mig_handle is None:
            continue
        info = _device(nvml, mig_handle, parent.nvml_index or 0, parent.driver, parent.cuda_version, mig=True)
        info.compute_capability = info.compute_capability or parent.compute_capability
        info.bf16 = bool(info.compute_capability and info.compute_capability >= (8, 0))
        info.model = parent.model
        if not info.name or info.name == "unknown GPU":
            info.name = f"{parent.name} MIG"
        found.append(info)
    return found


def _visible(devices: list[GpuInfo], env: str | None) -> tuple[list[GpuInfo], str | None]:
    """Apply CUDA_VISIBLE_DEVICES (indices or UUID prefixes); CUDA stops at the first bad entry."""
    if env is None:
        return devices, None
    entries = [e.strip() for e in env.split(",")]
    if not env.strip() or entries[0] in ("-1", ""):
        return [], f"CUDA_VISIBLE_DEVICES='{env}' hides every GPU; unset it or list the GPUs to use (e.g. 0,1)"
    chosen: list[GpuInfo] = []
    for entry in entries:
        if entry.isdigit():
            pick = [d for d in devices if d.nvml_index == int(entry) and not d.mig]
        else:
            pick = [d for d in devices if d.uuid and d.uuid.lower().startswith(entry.lower())]
        if len(pick) != 1 or pick[0] in chosen:
            break
        chosen.append(pick[0])
    if not chosen:
        return [], f"CUDA_VISIBLE_DEVICES='{env}' names no GPU of this machine; list indices (0,1) or UUIDs shown by `nvidia-smi -L`"
    return chosen, None


def probe(nvml: ModuleType | Any | None = None) -> GpuSet:
    """The GPUs CUDA would use here, from NVML. Never raises: no GPU gives an empty set with a reason."""
    if nvml is None:
        try:
            import pynvml as nvml
        except Exception:  # noqa: BLE001 - a broken NVML library is as good as none
            return GpuSet([], reason="the NVML Python library is missing (pip install nvidia-ml-py)")
    try:
        nvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001 - every NVML failure becomes the reason shown
        return GpuSet([], reason=_NVML_REASONS.get(type(exc).__name__, f"NVML could not start ({_text(exc) or type(exc).__name__})"))
    try:
        return _probe_started(nvml)
    except Exception as exc:  # noqa: BLE001 - every NVML failure becomes the reason shown
        return GpuSet([], reason=f"NVML failed while listing the GPUs ({_text(exc) or type(exc).__name__})")
    finally:
        _try(nvml.nvmlShutdown)


def _probe_started(nvml: Any) -> GpuSet:
    driver = _try(nvml.nvmlSystemGetDriverVersion)
    driver = _text(driver) if driver is not None else None
    cuda_int = _try(nvml.nvmlSystemGetCudaDriverVersion)
    cuda = f"{int(cuda_int) // 1000}.{int(cuda_int) % 1000 // 10}" if cuda_int else None
    count = int(nvml.nvmlDeviceGetCount())
    devices: list[GpuInfo] = []
    notes: list[str] = []
    empty_mig: list[str] = []
    for i in range(count):
        handle = _try(nvml.nvmlDeviceGetHandleByIndex, i)
        if handle is None:
            notes.append(f"GPU {i} did not answer NVML and is left out (check `nvidia-smi`)")
            continue
        info = _device(nvml, handle, i, driver, cuda, mig=False)
        mode = _try(nvml.nvmlDeviceGetMigMode, handle)
        if mode and int(mode[0]) == 1:
            instances = _mig_instances(nvml, handle, info)
            if instances:
                notes.append(
                    f"GPU {i} ({info.name}) is in MIG mode: each of its {len(instances)} instances is a separate device "
                    "and one training process uses one instance (pick it with CUDA_VISIBLE_DEVICES=MIG-…)"
                )
            else:
                empty_mig.append(f"GPU {i} ({info.name})")
            devices.extend(instances)
        else:
            devices.append(info)
    visible, why = _visible(devices, os.environ.get("CUDA_VISIBLE_DEVICES"))
    for cuda_index, gpu in enumerate(visible):
        gpu.index = cuda_index
    if visible:
        return GpuSet(visible, notes=notes)
    if why:
        return GpuSet([], reason=why, notes=notes)
    if empty_mig:
        return GpuSet([], reason=f"{', '.join(empty_mig)} is in MIG mode without instances; create one (nvidia-smi mig -cgi … -C) or turn MIG off (nvidia-smi -i N -mig 0)", notes=notes)
    if count == 0:
        return GpuSet([], reason="the NVIDIA driver is loaded but reports no GPU", notes=notes)
    return GpuSet([], reason="no GPU answered NVML (check `nvidia-smi`)", notes=notes)


def machine_ram_bytes() -> int | None:
    """This machine's total RAM (psutil), None when it cannot be read: the plan judges a run's
    host memory (block swap, offloaded encoders, loading) against it."""
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except (ImportError, OSError):
        return None
