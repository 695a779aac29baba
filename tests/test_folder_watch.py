"""A run folder moved at any moment: the trainer's writes that the move cuts short land at the new
path instead of failing the run (the race the supervisor-level test only hits by chance)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from core.folder_watch import FolderWatch
from core.runs.rundir import RunDir
from core.train.status import StatusFile


def follower(watch: FolderWatch, status: StatusFile):
    def follow() -> bool:
        new = watch.moved_to()
        if new is None:
            return False
        status.run.relocate(new)
        return True

    return follow


def a_run(tmp_path: Path) -> RunDir:
    run = RunDir(tmp_path / "runs" / "r1")
    run.path.mkdir(parents=True)
    run.write_status(state="running", step=3)
    return run


def test_a_status_write_after_an_unseen_move_lands_in_the_moved_folder(tmp_path: Path) -> None:
    run = a_run(tmp_path)
    status, watch = StatusFile(run.path), FolderWatch(run.path)
    status.follow = follower(watch, status)
    moved = tmp_path / "elsewhere"
    shutil.move(run.path, moved)
    status.update(step=4)
    assert json.loads((moved / "status.json").read_text())["step"] == 4
    assert not run.path.exists(), "nothing was written at the old path"
    assert status.run.path == moved


def test_without_a_move_a_missing_folder_is_still_an_error(tmp_path: Path) -> None:
    run = a_run(tmp_path)
    status, watch = StatusFile(run.path), FolderWatch(run.path)
    status.follow = follower(watch, status)
    shutil.rmtree(run.path)
    with pytest.raises(FileNotFoundError):
        status.update(step=4)


def test_a_tensorboard_write_the_move_broke_is_written_again_at_the_new_path(tmp_path: Path) -> None:
    """TensorBoard's writer appends to its event file by path (accelerate flushes at every log): after
    an unseen move the write fails, which without following the move ends the run."""
    from types import SimpleNamespace

    from accelerate.tracking import TensorBoardTracker

    from core.folder_watch import again_if_moved
    from core.runs.rundir import TB_DIR
    from core.train import trackers

    run = a_run(tmp_path)
    tracker = TensorBoardTracker("", str(run.path / TB_DIR))
    tracker.start()
    acc = SimpleNamespace(log_with=[tracker], trackers=[tracker], log=lambda values, step: tracker.log(values, step=step))
    trackers.log_step(acc, 1, {"loss": 1.0})
    watch, moved = FolderWatch(run.path), tmp_path / "elsewhere"
    shutil.move(run.path, moved)

    def follow() -> bool:
        new = watch.moved_to()
        if new is not None:
            trackers.follow(acc, new)
        return new is not None

    with pytest.raises(FileNotFoundError):
        again_if_moved(lambda: trackers.log_step(acc, 2, {"loss": 0.9}), None)
    again_if_moved(lambda: trackers.log_step(acc, 3, {"loss": 0.8}), follow)
    assert len(list((moved / TB_DIR).glob("events.out.tfevents.*"))) == 2, "a new event file beside the moved one"
    assert not run.path.exists()
