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
