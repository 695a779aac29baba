"""The trainer process ends promptly once it has written its final state."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import psutil
import pytest

from tests.train_helpers import REPO, make_run, metrics

#: Seconds the process may take to exit after status.json says "finished" (the interpreter's
#: teardown of torch/diffusers took 2.5-5 s here before the trainer skipped it).
EXIT_WITHIN_S = 1.5


@pytest.mark.slow
def test_the_trainer_exits_right_after_writing_finished_and_leaves_no_loader_workers(tmp_path, tiny_models, kohya_dataset):
    run = make_run(tmp_path / "run", tiny_models("sd1"), kohya_dataset(), settings={"dataloader_workers": 2}, schedule={"epochs": 0, "max_steps": 3})
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "core.train", str(run)], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    watched = psutil.Process(proc.pid)
    workers: set[int] = set()
    finished_at = None
    try:
        while proc.poll() is None:
            try:
                workers |= {child.pid for child in watched.children(recursive=True)}
            except psutil.Error:
                pass
            if finished_at is None:
                try:
                    if json.loads((run / "status.json").read_text(encoding="utf-8")).get("state") == "finished":
                        finished_at = time.monotonic()
                except (OSError, ValueError):
                    pass
            time.sleep(0.02)
        exited_at = time.monotonic()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert finished_at is not None
    assert exited_at - finished_at < EXIT_WITHIN_S
    assert workers, "the loader had no worker processes, so the test did not check them"
    assert not [pid for pid in workers if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert [e["message"] for e in metrics(run, "event")][-1] == "training finished"


def test_progress_lines_come_every_n_steps_with_the_mean_loss_and_the_eta(capsys) -> None:
    from core.train.metrics_writer import ProgressLog, progress_every

    assert (progress_every(3), progress_every(400), progress_every(100_000)) == (1, 20, 100)
    log = ProgressLog(40)
    for step in range(1, 41):
        log.step(step, loss=float(step), lr=1e-4, images_per_s=8.0, step_time_s=0.5)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[2] for line in lines] == ["1/40", "2/40"] + [f"{n}/40" for n in range(4, 41, 2)]
    assert lines[2] == "[sdtui] step 4/40  loss 3.5000  lr 1.00e-04  8.00 img/s  ETA 18s"
    assert lines[-1].endswith("ETA 0s")
