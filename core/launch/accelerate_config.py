"""The accelerate config (``accelerate.yaml``) for one GPU, several GPUs, several machines,
DeepSpeed ZeRO or FSDP — generated from run.toml's ``[distributed]`` section.

Without a GPU the same config is used and the launcher sets ``ACCELERATE_USE_CPU=1``
(see command.py): accelerate's own ``use_cpu``/``--cpu`` would silently start one process.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from core.errors import UserError
from core.settings import resolve

#: core.launch.agent's rendezvous (named here to keep torch out of this module).
LOOPBACK_RENDEZVOUS = "sdtui-loopback"


def world_size(distributed: dict[str, Any]) -> int:
    """Processes over all machines."""
    return int(distributed.get("num_processes", 1)) * int(distributed.get("num_machines", 1))


def parse_gpu_ids(value: str) -> list[int] | None:
    """``all`` → None, ``"0,2"`` → [0, 2]; a UserError for anything else."""
    text = str(value).strip().lower()
    if text in ("", "all"):
        return None
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"distributed.gpu_ids '{value}' is not a list of GPU numbers; use all or e.g. 0,1") from None
    if not ids or len(set(ids)) != len(ids) or min(ids) < 0:
        raise UserError(f"distributed.gpu_ids '{value}' must list distinct GPU numbers; use all or e.g. 0,1")
    return ids


def accelerate_config(distributed: dict[str, Any], mixed_precision: str, use_cpu: bool) -> dict[str, Any]:
    """The accelerate config as a dict (``to_yaml`` writes it)."""
    dist = resolve("distributed", distributed)
    backend = dist["backend"]
    machines = int(dist["num_machines"])
    rank = int(dist["machine_rank"])
    total = world_size(dist)
    if rank >= machines:
        raise UserError(f"distributed.machine_rank {rank} must be below distributed.num_machines ({machines}); use 0 … {machines - 1}")
    if machines > 1 and int(dist["main_process_port"]) == 0:
        raise UserError("distributed.main_process_port must be a fixed port when several machines train together; set e.g. 29500")
    gpu_ids = parse_gpu_ids(dist["gpu_ids"])
    if gpu_ids is not None and len(gpu_ids) != int(dist["num_processes"]):
        raise UserError(f"distributed.gpu_ids lists {len(gpu_ids)} GPUs but distributed.num_processes is {dist['num_processes']}; make them agree")
    config: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "debug": False,
        "distributed_type": "NO" if total == 1 else "MULTI_GPU",
        "downcast_bf16": "no",
        "mixed_precision": "no" if use_cpu else mixed_precision,
        "num_machines": machines,
        "num_processes": total,
        "machine_rank": rank,
        "gpu_ids": "all" if gpu_ids is None else ",".join(map(str, gpu_ids)),
        "use_cpu": False,
        "rdzv_backend": "static",
        "same_network": True,
        "main_training_function": "main",
        "tpu_env": [],
        "tpu_use_cluster": False,
        "tpu_use_sudo": False,
    }
    if machines > 1 or total > 1:
        config["main_process_ip"] = str(dist["main_process_ip"])
        config["main_process_port"] = int(dist["main_process_port"])
    if machines == 1 and total > 1:
        config["rdzv_backend"] = LOOPBACK_RENDEZVOUS  # core/launch/agent.py: the agent's store on 127.0.0.1 only
    if backend == "deepspeed":
        config["distributed_type"] = "DEEPSPEED"
        config["deepspeed_config"] = _deepspeed(dist, use_cpu)
    elif backend == "fsdp":
        if use_cpu:
            raise UserError(
                "distributed.backend fsdp needs NVIDIA GPUs (accelerate sets FSDP up for GPU processes only and would train unsharded on the CPU); use distributed.backend=ddp on the CPU"
            )
        config["distributed_type"] = "FSDP"
        config["fsdp_config"] = _fsdp2(dist)
    return config


def _fsdp2(dist: dict[str, Any]) -> dict[str, Any]:
    """FSDP2 (``torch.distributed.fsdp.fully_shard`` through accelerate): each block the model names in
    ``_no_split_modules`` (diffusers: the UNet's ResNet, transformer and up blocks, FLUX's double and
    single blocks; transformers: CLIP's encoder layers) sharded over the processes, parameters
    gathered for their block's forward and backward and sharded again after, a sharded checkpoint;
    ``offload`` keeps the shards in CPU memory. Not a size-based wrap: under FSDP2 it would pick
    ``ModuleList`` containers, which ``fully_shard`` refuses (they have no forward)."""
    return {
        "fsdp_version": 2,
        "fsdp_reshard_after_forward": True,
        "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "fsdp_offload_params": bool(dist["offload"]),
        "fsdp_state_dict_type": "SHARDED_STATE_DICT",
        "fsdp_cpu_ram_efficient_loading": False,
    }


def _deepspeed(dist: dict[str, Any], use_cpu: bool) -> dict[str, Any]:
    if use_cpu:
        raise UserError("distributed.backend deepspeed needs NVIDIA GPUs; use distributed.backend=ddp on the CPU")
    if importlib.util.find_spec("deepspeed") is None:
        raise UserError("distributed.backend deepspeed needs DeepSpeed, which is not installed; run pip install 'sdtui[deepspeed]'")
    stage = int(dist["zero_stage"])
    offload = "cpu" if dist["offload"] else "none"
    return {
        "zero_stage": stage,
        "offload_optimizer_device": offload,
        "offload_param_device": offload if stage == 3 else "none",
        "zero3_init_flag": False,
        "zero3_save_16bit_model": stage == 3,
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
    }


def to_yaml(config: dict[str, Any]) -> str:
    """The config as YAML text, keys in order."""
    import yaml

    return yaml.safe_dump(config, sort_keys=False, default_flow_style=False)


def other_node_commands(run_toml: str, distributed: dict[str, Any]) -> list[str]:
    """The command to run on every other machine of a multi-machine run (empty for one machine)."""
    dist = resolve("distributed", distributed)
    machines = int(dist["num_machines"])
    this = int(dist["machine_rank"])
    return [
        f"sdtui train {run_toml} --set distributed.machine_rank={rank} "
        f"--set distributed.main_process_ip={dist['main_process_ip']} --set distributed.main_process_port={dist['main_process_port']}"
        for rank in range(machines)
        if rank != this
    ]
