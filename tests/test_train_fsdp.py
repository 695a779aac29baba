"""FSDP2 for real on two CPU processes over gloo (accelerate itself sets FSDP up for GPU processes only)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.train_helpers import REPO


@pytest.mark.slow
def test_fsdp2_shards_the_tiny_unet_over_two_cpu_processes_and_steps_as_one_process(tmp_path, tiny_models):
    """A full fine-tune step with the UNet's blocks sharded as the FSDP2 config wraps them, over 2 gloo
    ranks each on half the batch, gives the weights of one unsharded step on the whole batch."""
    out = tmp_path / "result"
    torchrun = Path(sys.executable).with_name("torchrun")
    argv = [str(torchrun), "--nproc_per_node", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint", "localhost:0", "tests/fsdp2_worker.py", str(tiny_models("sd1")), str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert out.read_text() == "ok"


def test_the_fsdp_config_is_fsdp2_and_refused_on_the_cpu_in_one_sentence() -> None:
    from core.errors import UserError
    from core.launch.accelerate_config import accelerate_config

    config = accelerate_config({"num_processes": 2, "backend": "fsdp"}, "bf16", use_cpu=False)["fsdp_config"]
    assert (config["fsdp_version"], config["fsdp_auto_wrap_policy"], config["fsdp_state_dict_type"]) == (2, "TRANSFORMER_BASED_WRAP", "SHARDED_STATE_DICT")
    with pytest.raises(UserError, match=r"^distributed.backend fsdp needs NVIDIA GPUs \(accelerate sets FSDP up for GPU processes only"):
        accelerate_config({"num_processes": 2, "backend": "fsdp"}, "bf16", use_cpu=True)
