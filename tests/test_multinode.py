"""Distributed for real on the CPU: 2-process DDP over gloo, and two machines on loopback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.gpu import GpuSet
from core.launch.start import free_port, start_run
from tests.test_launch_support import no_leftovers, steps, wait_ended, write_config  # noqa: F401 (no_leftovers is a fixture)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_leftovers")]
CPU = GpuSet([], reason="test: CPU only")


def test_two_process_ddp_over_gloo(tmp_path: Path, tiny_models, kohya_dataset) -> None:
    config = write_config(
        tmp_path,
        tiny_models("sd1"),
        kohya_dataset(((3, "sks dog", 3),)),
        {"epochs": 2},
        distributed={"num_processes": 2, "main_process_port": 0},
    )
    run = start_run(config, tmp_path / "runs", gpus=CPU)
    plan = json.loads(run.plan_json.read_text())
    final = wait_ended(run)
    assert final["state"] == "finished" and final["exit_code"] == 0, final.get("error")
    assert plan["run"]["gpus"] == 2 and plan["run"]["total_steps"] == 10
    assert steps(run.path) == list(range(1, 11))
    assert final["total_steps"] == 10 and final["world_size"] == 2
    assert sorted(r["role"] for r in final["trainer_pids"]) == ["trainer-rank0", "trainer-rank1"]
    assert "--multi_gpu" in final["command"] and "core.launch.agent" in final["command"]


def test_two_machines_on_loopback(tmp_path: Path, tiny_models, kohya_dataset) -> None:
    model, data = tiny_models("sd1"), kohya_dataset(((3, "sks dog", 3),))
    port = free_port()
    runs = []
    for rank in (0, 1):
        config = write_config(
            tmp_path,
            model,
            data,
            {"epochs": 2},
            name=f"node{rank}",
            distributed={"num_processes": 1, "num_machines": 2, "machine_rank": rank, "main_process_ip": "127.0.0.1", "main_process_port": port},
        )
        notices: list[str] = []
        runs.append(start_run(config, tmp_path / f"machine{rank}", gpus=CPU, notify=notices.append))
        if rank == 0:
            assert any("--set distributed.machine_rank=1" in n and f"main_process_port={port}" in n for n in notices)
    try:
        finals = [wait_ended(run) for run in runs]
    except BaseException:
        for run in runs:  # pytest shows them with the failure: which machine stopped where
            print(f"--- {run.log}\n{run.log.read_text(errors='replace')[-4000:] if run.log.is_file() else '(none)'}")
        raise
    assert [f["state"] for f in finals] == ["finished", "finished"], [f.get("error") for f in finals]
    assert [f["exit_code"] for f in finals] == [0, 0]
    plan = json.loads(runs[0].plan_json.read_text())
    assert plan["run"]["gpus"] == 2 and plan["run"]["total_steps"] == 10
    assert steps(runs[0].path) == list(range(1, 11))
    assert finals[0]["total_steps"] == 10
