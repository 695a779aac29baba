"""The accelerate config and launch command for one GPU, DDP, several machines, DeepSpeed, FSDP, CPU."""

from __future__ import annotations

import importlib.util

import pytest
import yaml

from core.errors import UserError
from core.launch.accelerate_config import accelerate_config, other_node_commands, to_yaml, world_size
from core.launch.command import launch_command, launch_env


def test_single_gpu() -> None:
    config = accelerate_config({"num_processes": 1}, "bf16", use_cpu=False)
    assert config["distributed_type"] == "NO" and config["num_processes"] == 1 and config["mixed_precision"] == "bf16"
    argv = launch_command("/runs/r", config)
    assert argv[1:] == ["-m", "core.launch.agent", "--config_file", "/runs/r/accelerate.yaml", "-m", "core.train", "/runs/r"]


def test_chosen_gpus_of_this_machine() -> None:
    config = accelerate_config({"num_processes": 2, "gpu_ids": "0,2", "main_process_port": 29555}, "fp16", use_cpu=False)
    assert config["distributed_type"] == "MULTI_GPU" and config["num_processes"] == 2 and config["gpu_ids"] == "0,2"
    assert config["main_process_port"] == 29555
    assert config["rdzv_backend"] == "sdtui-loopback", "one machine: the agent's store listens on 127.0.0.1 only"
    assert "--multi_gpu" in launch_command("/r", config)
    with pytest.raises(UserError, match=r"gpu_ids lists 1 GPUs but distributed.num_processes is 2"):
        accelerate_config({"num_processes": 2, "gpu_ids": "1"}, "fp16", use_cpu=False)
    with pytest.raises(UserError, match="gpu_ids 'a,b'"):
        accelerate_config({"num_processes": 2, "gpu_ids": "a,b"}, "fp16", use_cpu=False)


def test_several_machines_and_the_commands_for_the_others() -> None:
    dist = {"num_processes": 4, "num_machines": 2, "machine_rank": 0, "main_process_ip": "10.0.0.5", "main_process_port": 29600}
    config = accelerate_config(dist, "bf16", use_cpu=False)
    assert world_size(dist) == 8
    assert (config["num_processes"], config["num_machines"], config["machine_rank"]) == (8, 2, 0)
    assert (config["main_process_ip"], config["main_process_port"]) == ("10.0.0.5", 29600)
    assert config["rdzv_backend"] == "static", "several machines: the configured address"
    commands = other_node_commands("/runs/r/run.toml", dist)
    assert commands == ["sdtui train /runs/r/run.toml --set distributed.machine_rank=1 --set distributed.main_process_ip=10.0.0.5 --set distributed.main_process_port=29600"]
    with pytest.raises(UserError, match="machine_rank 2 must be below"):
        accelerate_config({**dist, "machine_rank": 2}, "bf16", use_cpu=False)
    with pytest.raises(UserError, match="fixed port"):
        accelerate_config({**dist, "main_process_port": 0}, "bf16", use_cpu=False)


def test_cpu_uses_the_same_config_and_the_env_switch() -> None:
    config = accelerate_config({"num_processes": 2}, "bf16", use_cpu=True)
    assert config["use_cpu"] is False and config["distributed_type"] == "MULTI_GPU" and config["mixed_precision"] == "no"
    env = launch_env(use_cpu=True)
    assert env["ACCELERATE_USE_CPU"] == "1" and "SIGHUP" not in env["TORCHELASTIC_SIGNALS_TO_HANDLE"]
    assert "ACCELERATE_USE_CPU" not in launch_env(use_cpu=False)
    assert "--cpu" not in launch_command("/r", config)


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is not None, reason="deepspeed is installed")
def test_deepspeed_without_deepspeed_says_how_to_install() -> None:
    with pytest.raises(UserError, match=r"pip install 'sdtui\[deepspeed\]'"):
        accelerate_config({"num_processes": 2, "backend": "deepspeed"}, "bf16", use_cpu=False)


def test_deepspeed_block(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "deepspeed" else real(name, *a))
    config = accelerate_config({"num_processes": 2, "backend": "deepspeed", "zero_stage": 3, "offload": True}, "bf16", use_cpu=False)
    assert config["distributed_type"] == "DEEPSPEED"
    assert config["deepspeed_config"]["zero_stage"] == 3
    assert config["deepspeed_config"]["offload_optimizer_device"] == "cpu" and config["deepspeed_config"]["offload_param_device"] == "cpu"
    assert "--multi_gpu" not in launch_command("/r", config)
    with pytest.raises(UserError, match="needs NVIDIA GPUs"):
        accelerate_config({"num_processes": 2, "backend": "deepspeed"}, "bf16", use_cpu=True)


def test_fsdp_block_and_yaml_round_trip() -> None:
    config = accelerate_config({"num_processes": 4, "backend": "fsdp", "offload": True}, "bf16", use_cpu=False)
    assert config["distributed_type"] == "FSDP" and config["fsdp_config"]["fsdp_offload_params"] is True
    assert config["fsdp_config"]["fsdp_version"] == 2 and config["fsdp_config"]["fsdp_reshard_after_forward"] is True
    assert yaml.safe_load(to_yaml(config)) == config
    with pytest.raises(UserError, match="fsdp needs NVIDIA GPUs"):
        accelerate_config({"num_processes": 2, "backend": "fsdp"}, "bf16", use_cpu=True)


def test_accelerate_reads_our_yaml(tmp_path) -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    path = tmp_path / "accelerate.yaml"
    path.write_text(to_yaml(accelerate_config({"num_processes": 2, "main_process_port": 29511}, "bf16", use_cpu=False)))
    loaded = load_config_from_file(str(path))
    assert loaded.num_processes == 2 and str(loaded.distributed_type).endswith("MULTI_GPU") and loaded.main_process_port == 29511
