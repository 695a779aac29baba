"""Real two-process DDP on the CPU (gloo) under ``accelerate launch``: stop, resume, same weights, planned schedule."""

from __future__ import annotations

import subprocess
import threading
import time

import pytest

from core.launch.control import request
from core.plan.schedule import steps_per_epoch
from core.runs.rundir import RunDir
from tests.train_helpers import launch, make_run, metrics, status, weight_hashes

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ddp")]


def test_two_processes_stop_together_resume_and_end_with_the_same_weights(tmp_path, tiny_models, kohya_dataset):
    data = kohya_dataset(((1, "sks dog", 5),))
    run = make_run(
        tmp_path / "run",
        tiny_models("sdxl"),
        data,
        "sdxl",
        "lora",
        settings={"train_text_encoder": True},
        schedule={"epochs": 2, "lr_scheduler": "linear", "lr_warmup_steps": 2, "learning_rate": 1e-3},
        processes=2,
    )
    hashes = tmp_path / "hashes.txt"
    args = ["--weights-hash", str(hashes)]
    # a stop written before the launch ends the start-up (test_train_phases); this one comes with the first step
    done: list[subprocess.CompletedProcess[str]] = []
    worker = threading.Thread(target=lambda: done.append(launch(run, 2, args=args)))
    worker.start()
    deadline = time.monotonic() + 240
    while not metrics(run, "step") and worker.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    stop = request(RunDir(run), "stop")
    worker.join()

    first = done[0]
    assert first.returncode == 0, first.stderr[-3000:]
    stopped = status(run)
    assert (stopped["state"], stopped["control_ack"]["id"]) == ("stopped", stop)
    assert 1 <= stopped["step"] < 6
    assert (run / "checkpoints" / f"step-{stopped['step']}" / "state.json").is_file()

    second = launch(run, 2, args=args)

    assert second.returncode == 0, second.stderr[-3000:]
    per_epoch = steps_per_epoch({"64x64": 5}, 1, 2, 1)
    total = per_epoch * 2
    assert (per_epoch, total) == (3, 6)
    final = status(run)
    assert (final["state"], final["step"], final["total_steps"]) == ("finished", total, total)
    assert sorted(p["role"] for p in final["trainer_pids"]) == ["trainer-rank0", "trainer-rank1"]
    steps = metrics(run, "step")
    assert [s["step"] for s in steps] == list(range(1, total + 1))  # rank 0 writes, once per step; the stop ran once
    assert all(len(s["mem"]) == 2 for s in steps)
    # the LR follows the schedule in optimizer steps of this run, not multiplied by the process count
    expected = [1e-3 * (k / 2 if k < 2 else (total - k) / (total - 2)) for k in range(total)]
    assert [s["lr"] for s in steps] == pytest.approx(expected)
    final_hashes = weight_hashes(hashes, total)
    assert sorted(rank for rank, _ in final_hashes) == ["0", "1"]
    assert len({digest for _, digest in final_hashes}) == 1
