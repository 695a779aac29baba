"""Checks before a run starts, each failing with one sentence that names the thing and the fix.

Model and dataset usable, the plan fits the GPUs (unless forced), enough free disk for the
checkpoints and outputs, the GPUs not already busy (a warning), the runs folder writable.
Without a GPU the run goes to the CPU with a notice.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.atomic import read_json
from core.errors import UserError
from core.families import spec
from core.families.detect import MODEL_FILE_SUFFIXES, check_loadable, hub_offline, looks_like_hub_id
from core.launch.accelerate_config import parse_gpu_ids
from core.memory.data import params
from core.memory.estimator import HEADROOM
from core.memory.techniques import RAM_HEADROOM
from core.settings import FP16_NEEDS_A_GPU
from core.units import GIB, size

#: Optimizer state bytes per trained fp32 parameter byte (AdamW: two fp32 moments …).
_OPTIMIZER_STATE = {"adamw": 2.0, "adamw8bit": 0.5, "lion8bit": 0.25, "adafactor": 0.1, "prodigy": 4.0, "schedulefree_adamw": 2.0}


@dataclass
class Preflight:
    """What the checks decided: the GPUs to use (none: the CPU), the plan, and notices for the user."""

    gpus: Any
    use_cpu: bool
    plan: Any
    disk_needed_bytes: int
    notices: list[str] = field(default_factory=list)


def check_wandb(logging: Mapping[str, Any]) -> None:
    """UserError when ``[logging] wandb_project`` is set but wandb is not installed."""
    if str(logging.get("wandb_project", "")).strip() and importlib.util.find_spec("wandb") is None:
        raise UserError(
            "[logging] wandb_project is set but the wandb package is not installed; install it (pip install wandb) "
            "and log in (wandb login), or clear wandb_project to log to TensorBoard only"
        )


def check_model(path: str) -> str | None:
    """UserError when ``[model] path`` is not usable; a notice for a hub id that will be fetched."""
    local = Path(path).expanduser()
    if local.is_dir():
        if not (local / "model_index.json").is_file() and not (local / "unet").is_dir():
            raise UserError(f"the model folder {local} is not a diffusers model (no model_index.json); point [model] path at a diffusers folder or a .safetensors file")
        check_loadable(read_json(local / "model_index.json", {}), local)
        return None
    if local.is_file():
        if local.suffix.lower() not in MODEL_FILE_SUFFIXES:
            raise UserError(f"the model file {local} is not a checkpoint ({', '.join(MODEL_FILE_SUFFIXES)}); point [model] path at a diffusers folder or a .safetensors file")
        return None
    if looks_like_hub_id(path):
        if _hub_cached(path):
            return None
        if hub_offline():
            raise UserError(f"the model {path} is neither a local path nor in the Hugging Face cache, and HF_HUB_OFFLINE is set; download it first or point [model] path at a local folder")
        return f"the model {path} is not in the Hugging Face cache; the trainer will download it first"
    raise UserError(f"the model {path} does not exist; fix [model] path in the run config (a diffusers folder, a .safetensors file or a hub id)")


def _hub_cached(repo_id: str) -> bool:
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    cache = Path(os.environ.get("HF_HUB_CACHE", home / "hub"))
    return (cache / ("models--" + repo_id.replace("/", "--"))).is_dir()


def choose_gpus(found: Any, distributed: dict[str, Any]) -> tuple[Any, bool, str | None]:
    """The GpuSet this machine's processes use, whether that is the CPU, and a notice."""
    from core.gpu import GpuSet

    processes = int(distributed.get("num_processes", 1))
    if found.count == 0:
        reason = found.reason or "no NVIDIA GPU was found"
        return GpuSet([], reason=found.reason), True, f"no GPU: {reason}; training runs on the CPU ({processes} process{'es' if processes > 1 else ''}), which is slow but works for the demo"
    ids = parse_gpu_ids(str(distributed.get("gpu_ids", "all")))
    by_index = {g.index: g for g in found.gpus}
    if ids is None:
        if processes > found.count:
            raise UserError(f"distributed.num_processes is {processes} but this machine has {found.count} GPU(s); use --set distributed.num_processes={found.count}")
        chosen = found.gpus[:processes]
    else:
        unknown = [i for i in ids if i not in by_index]
        if unknown:
            raise UserError(f"distributed.gpu_ids names GPU {unknown[0]}, which this machine does not have (it has {', '.join(map(str, sorted(by_index)))}); fix distributed.gpu_ids")
        chosen = [by_index[i] for i in ids]
    return GpuSet(chosen), False, None


def busy_gpu_notices(gpus: Any, needed_bytes: int) -> list[str]:
    """Warnings for chosen GPUs on which other processes already hold memory."""
    notices = []
    for gpu in gpus.gpus:
        others = [p for p in gpu.processes if p.pid != os.getpid()]
        if not others:
            continue
        used = sum(p.used_bytes or 0 for p in others)
        names = ", ".join(f"{p.name or '?'} (pid {p.pid})" for p in others[:3])
        short = gpu.vram_free_bytes < needed_bytes
        notices.append(
            f"warning: GPU {gpu.index} already has {used / GIB:.1f} GiB in use by {names}"
            + (f"; only {gpu.vram_free_bytes / GIB:.1f} GiB are free of the {needed_bytes / GIB:.1f} GiB the run needs, so it may run out of memory" if short else "")
        )
    return notices


def disk_needed(config: Any, plan: Any) -> int:
    """Bytes the run will write: checkpoints (keep + the one being written) and the outputs.

    Trained parameters come from core/memory (``trainable``), scaled to the size of a local
    model's denoiser (the family spec's, e.g. its UNet); a checkpoint holds them in fp32 with the optimizer state, the outputs twice
    (two formats).
    """
    from core.memory.trainable import trainable

    family, method = config.family, config.method
    settings = plan.settings
    parts = params()[family]
    denoiser = spec(family).denoiser
    scale = _model_scale(config.model_path, denoiser, parts[denoiser]["params"])
    counted = trainable(family, method, settings)
    state = _OPTIMIZER_STATE.get(str(settings["optimizer"]), 2.0)
    checkpoint = counted.params * 4 * scale * (1 + state)
    keep = int(plan.schedule["keep_checkpoints"])
    if method in ("lora", "textual_inversion"):
        outputs = 2 * counted.saved * 4 * scale
    else:
        outputs = 2 * sum(p["params"] for p in parts.values()) * 2 * scale
    return int(checkpoint * (keep + 1) + outputs)


def _model_scale(model_path: str, denoiser: str, denoiser_params: int) -> float:
    """A local model's denoiser size against the family's (the tiny test model is far smaller)."""
    folder = Path(model_path).expanduser() / denoiser
    if not folder.is_dir():
        return 1.0
    size = sum(f.stat().st_size for f in folder.iterdir() if f.suffix in MODEL_FILE_SUFFIXES)
    if size == 0:
        return 1.0
    bytes_per_param = 2 if any("fp16" in f.name for f in folder.iterdir()) else 4
    return min(1.0, size / bytes_per_param / denoiser_params)


def check_fit(plan: Any, force: bool) -> list[str]:
    """UserError when the plan does not fit the chosen GPUs (a warning with ``force``).

    The verdict is the plan's own (``make_plan`` judges as the picker does), so preflight never
    refuses what the wizard or ``sdtui plan`` called fitting.
    """
    if plan.fits is not False:
        return []
    ram = getattr(plan, "ram", {}) or {}
    if ram.get("fits") is False and plan.vram_estimate_bytes <= plan.gpu["vram_gb"] * GIB * (1 - HEADROOM):
        message = f"the run needs about {ram['need_gb']:.1f} GiB of RAM but this machine has {ram['have_gb']:g} GiB and {RAM_HEADROOM:.0%} stays free"
        if not force:
            raise UserError(f"{message}; swap fewer blocks (settings.blocks_to_swap), cache text-encoder outputs to disk, or pass --yes to launch anyway")
        return [f"warning: {message}; launching anyway (--yes)"]
    message = f"the estimated peak of {plan.vram_estimate_bytes / GIB:.1f} GiB does not fit the smallest chosen GPU ({plan.gpu['name']}, {plan.gpu['vram_gb']} GiB) with headroom"
    if not force:
        raise UserError(f"{message}; pick a recipe that fits (sdtui plan lists them) or pass --yes to launch anyway")
    return [f"warning: {message}; launching anyway (--yes)"]


def check_disk(folder: Path, needed: int) -> None:
    """UserError when the runs folder's disk has less free space than the run will write."""
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise UserError(
            f"the disk of {folder} has {size(free)} free but the run will write about {size(needed)} of checkpoints and outputs; "
            "free some space, lower schedule.keep_checkpoints or pass another --runs-dir"
        )


def check_runs_dir(runs_dir: Path) -> None:
    """UserError when the runs folder cannot be created or written."""
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"the runs folder {runs_dir} cannot be created ({exc.strerror}); pass a writable --runs-dir") from None
    probe = runs_dir / f".sdtui-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"the runs folder {runs_dir} is not writable ({exc.strerror}); pass a writable --runs-dir") from None


def preflight(config: Any, runs_dir: Path, found_gpus: Any, force: bool = False) -> Preflight:
    """Run every check; raise UserError on the first problem, return the decisions and notices."""
    from core.plan.planner import make_plan

    notices: list[str] = []
    check_runs_dir(runs_dir)
    check_wandb(config.section("logging"))
    model_notice = check_model(config.model_path)
    if model_notice:
        notices.append(model_notice)
    from core.dataset.scan import scan_config

    scan = scan_config(config)
    gpus, use_cpu, cpu_notice = choose_gpus(found_gpus, config.distributed)
    if use_cpu and config.settings["mixed_precision"] == "fp16":
        raise UserError(FP16_NEEDS_A_GPU)
    if cpu_notice:
        notices.append(cpu_notice)
    from core.gpu import machine_ram_bytes

    plan = make_plan(config, scan, gpus, ram_bytes=None if getattr(gpus, "simulated", False) else machine_ram_bytes())
    notices += check_fit(plan, force)
    if not use_cpu:
        notices += busy_gpu_notices(gpus, plan.vram_estimate_bytes)
    needed = disk_needed(config, plan)
    check_disk(runs_dir, needed)
    notices += [f"warning: {w}" for w in plan.warnings]
    return Preflight(gpus, use_cpu, plan, needed, notices)
