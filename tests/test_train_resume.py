"""A stopped run resumes from its newest checkpoint: same step count, same losses as an uninterrupted run."""

from __future__ import annotations

import threading
import time

import pytest

from core.launch.control import request
from core.runs import checkpoints
from core.runs.rundir import RunDir
from core.train.outputs import train_state as checkpoint
from tests.train_helpers import make_run, metrics, status, train

pytestmark = pytest.mark.slow

SCHEDULE = {"epochs": 2, "save_every_epochs": 0, "lr_scheduler": "cosine", "lr_warmup_steps": 1}


def stop_after(run_dir, step: int) -> threading.Thread:
    """Ask the running trainer to stop once metrics.jsonl shows ``step``."""

    def watch() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if any(m["step"] >= step for m in metrics(run_dir, "step")):
                request(RunDir(run_dir), "stop")
                return
            time.sleep(0.02)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_a_stopped_run_resumes_where_it_stopped(tmp_path, tiny_models, kohya_dataset):
    data = kohya_dataset(((1, "sks dog", 3),))
    model = tiny_models("sdxl")
    whole = make_run(tmp_path / "whole", model, data, "sdxl", "lora", schedule=SCHEDULE)
    assert train(whole) == 0
    reference = {m["step"]: m for m in metrics(whole, "step")}
    assert len(reference) == 6

    run = make_run(tmp_path / "run", model, data, "sdxl", "lora", schedule=SCHEDULE)
    watcher = stop_after(run, 2)
    assert train(run) == 0
    watcher.join()
    first = status(run)
    stopped_at = first["step"]
    assert first["state"] == "stopped" and 2 <= stopped_at < 6
    assert first["control_ack"]["action"] == "stop"
    assert checkpoints.latest(run / "checkpoints").name == f"step-{stopped_at}"

    assert train(run) == 0

    final = status(run)
    assert (final["state"], final["step"], final["total_steps"]) == ("finished", 6, 6)
    steps = [m["step"] for m in metrics(run, "step")]
    assert steps == list(range(1, 7))  # the second start went on at stopped_at + 1 (the stop is not executed again)
    for line in metrics(run, "step"):
        assert line["lr"] == pytest.approx(reference[line["step"]]["lr"])
        assert line["loss"] == pytest.approx(reference[line["step"]]["loss"], rel=1e-4)
    assert any(f"resumed from step-{stopped_at}" in m["message"] for m in metrics(run, "event"))


def test_checkpoints_are_complete_and_only_the_newest_are_kept(tmp_path, tiny_models, kohya_dataset):
    data = kohya_dataset(((1, "sks dog", 2),))
    run = make_run(tmp_path / "run", tiny_models("sdxl"), data, "sdxl", "lora", schedule={"max_steps": 5, "save_every_steps": 1, "keep_checkpoints": 2})
    assert train(run) == 0
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["step-4", "step-5"]
    assert [m["step"] for m in metrics(run, "checkpoint")] == [1, 2, 3, 4, 5]
    loaded = checkpoint.load(run / "checkpoints" / "step-5")
    assert loaded.state["step"] == 5 and loaded.tensors and {"optimizer", "lr_scheduler", "rng"} <= set(loaded.objects)


def test_a_manual_save_is_never_rotated_away(tmp_path):
    import torch

    tensors = {"w": torch.zeros(2)}
    checkpoint.save(tmp_path, 1, tensors, {}, {}, keep=2, manual=True)
    for step in (2, 3, 4):
        checkpoint.save(tmp_path, step, tensors, {}, {}, keep=2)
    assert [p.name for p in checkpoints.checkpoints(tmp_path)] == ["step-1", "step-3", "step-4"]
    assert checkpoints.is_manual(tmp_path / "step-1") and not checkpoints.is_manual(tmp_path / "step-4")
    # a periodic save at the same step as a manual one keeps it manual
    checkpoint.save(tmp_path, 1, tensors, {}, {}, keep=2)
    assert checkpoints.is_manual(tmp_path / "step-1")


def test_a_half_written_checkpoint_is_ignored(tmp_path):
    (tmp_path / "step-3").mkdir()
    (tmp_path / ".tmp-step-9").mkdir()
    (tmp_path / "step-2").mkdir()
    (tmp_path / "step-2" / "state.json").write_text('{"step": 2}')
    assert checkpoints.latest(tmp_path).name == "step-2"
    (tmp_path / "step-7").mkdir()  # a copy of step-2 planted or renamed by hand is not step 7
    (tmp_path / "step-7" / "state.json").write_text('{"step": 2}')
    assert checkpoints.latest(tmp_path).name == "step-2"
