"""control.json requests reach the running trainer: pause/resume, save, sample, stop, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest

from core.launch.control import request
from core.runs.control_file import ControlReader
from core.runs.rundir import RunDir
from tests.train_helpers import make_run, metrics, status, train

pytestmark = pytest.mark.slow


def wait_for(predicate, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def in_thread(target) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def test_pause_holds_the_steps_and_save_and_sample_work_while_paused(tmp_path, tiny_models, kohya_dataset):
    data = kohya_dataset(((1, "sks dog", 2),))
    run_dir = make_run(tmp_path / "run", tiny_models("sdxl"), data, "sdxl", "lora", schedule={"max_steps": 4}, prompts=["sks dog --w 64 --h 64 --s 1"])
    run = RunDir(run_dir)
    seen: dict[str, object] = {}

    def drive() -> None:
        wait_for(lambda: metrics(run_dir, "step"))
        request(run, "pause")
        wait_for(lambda: run.read_status().get("state") == "paused")
        paused_steps = len(metrics(run_dir, "step"))
        time.sleep(2.0)
        seen["held"] = len(metrics(run_dir, "step")) == paused_steps
        seen["paused_at"] = paused_steps
        save, sample = request(run, "save"), request(run, "sample")
        wait_for(lambda: sample in run.read_status().get("control_done", []))
        seen["done"] = {save, sample} <= set(run.read_status()["control_done"])
        seen["still_paused"] = run.read_status().get("state") == "paused"
        request(run, "resume")

    driver = in_thread(drive)
    assert train(run_dir) == 0
    driver.join(5)

    assert seen["held"] and seen["done"] and seen["still_paused"]
    paused_at = seen["paused_at"]
    assert status(run_dir)["state"] == "finished" and status(run_dir)["control_ack"]["action"] == "resume"
    assert paused_at in [m["step"] for m in metrics(run_dir, "checkpoint")]
    assert [m["step"] for m in metrics(run_dir, "sample")] == [paused_at]
    messages = [m["message"] for m in metrics(run_dir, "event")]
    assert f"paused at step {paused_at}" in messages and f"resumed at step {paused_at}" in messages
    steps = metrics(run_dir, "step")
    assert [m["step"] for m in steps] == [1, 2, 3, 4]
    # the step after the resume is timed from the resume: the pause, save and sample are not in it (nor in the ETA)
    if paused_at < 4:
        assert steps[paused_at]["step_time_s"] < 1.5
    # the save asked for while paused is a manual checkpoint, kept out of the rotation, and says so
    manual = [m for m in metrics(run_dir, "checkpoint") if m["step"] == paused_at]
    assert manual and manual[0]["manual"] is True
    assert any("kept beyond keep_checkpoints" in m for m in messages)
    # one epoch numbering: status.json says the epoch of the newest step, as the step lines do
    assert status(run_dir)["epoch"] == steps[-1]["epoch"] == 2


def test_sigterm_stops_with_a_checkpoint(tmp_path, tiny_models, kohya_dataset):
    data = kohya_dataset(((1, "sks dog", 2),))
    run_dir = make_run(tmp_path / "run", tiny_models("sdxl"), data, "sdxl", "lora", schedule={"max_steps": 50})

    def term() -> None:
        wait_for(lambda: metrics(run_dir, "step"))
        os.kill(os.getpid(), signal.SIGTERM)

    killer = in_thread(term)
    assert train(run_dir) == 0
    killer.join(5)

    final = status(run_dir)
    assert final["state"] == "stopped" and final["step"] < 50
    assert (run_dir / "checkpoints" / f"step-{final['step']}" / "state.json").is_file()
    assert (run_dir / "output" / "tiny.safetensors").is_file()


def test_requests_run_once_and_unknown_ones_are_ignored(tmp_path):
    path = tmp_path / "control.json"
    path.write_text(
        json.dumps(
            {
                "requests": [
                    {"id": "a", "action": "save", "at": 1.0},
                    {"id": "b", "action": "explode", "at": 2.0},
                    {"id": "", "action": "stop", "at": 3.0},
                    "junk",
                    {"id": "c", "action": "pause", "at": 4.0},
                ]
            }
        )
    )
    reader = ControlReader(path, done=["c"])
    assert [r["id"] for r in reader.pending()] == ["a"]
    reader.mark_done(reader.pending()[0])
    assert reader.pending() == []
    path.write_text('{"requests": [')  # half-written: nothing, no crash
    assert reader.pending() == []


def test_the_poller_returns_requests_for_the_loop_to_carry_out_and_acknowledges_each_once(tmp_path, tiny_models, kohya_dataset):
    from tests.train_helpers import set_up

    run = make_run(tmp_path / "run", tiny_models("sd1"), kohya_dataset(), "sd1")
    trainer = set_up(run)
    save = request(RunDir(run), "save")

    polled = trainer.poller.poll()

    assert polled.actions == ["save"] and [r["id"] for r in polled.requests] == [save]
    assert not (run / "checkpoints").exists() or not any((run / "checkpoints").iterdir())  # polling executes nothing
    trainer.poller.ack(polled.requests)
    assert status(run)["control_ack"]["id"] == save
    assert trainer.poller.poll().actions == []
    assert trainer.poller.poll(signalled=True).actions == ["stop"]  # SIGTERM reads as a stop on every rank
    trainer.metrics.close()
