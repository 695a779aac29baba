"""Run folders: status merging, the derived lost state, discovery, ids, checkpoints."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from core.errors import UserError
from core.procs import describe
from core.runs.listing import create_run_dir, list_runs, new_run_id, resolve_run
from core.runs.locks import lock
from core.runs.rundir import RunDir
from core.runs.states import ENDED_STATES, LIVE_STATES, LOST, STALLED, STATES


def make_run(root: Path, name: str, **status: object) -> RunDir:
    run = RunDir(root / name)
    run.path.mkdir(parents=True)
    run.run_toml.write_text('name = "x"\n')
    run.write_status(**status)
    return run


def test_write_status_merges_and_removes_keys(tmp_path: Path) -> None:
    run = make_run(tmp_path, "a", state="running", step=3, error="old")
    run.write_status(step=4, error=None)
    data = json.loads(run.status_json.read_text())
    assert data["state"] == "running" and data["step"] == 4 and "error" not in data and data["updated_at"] > 0


def test_state_is_lost_when_recorded_processes_are_gone(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    record = describe(psutil.Process(child.pid), "supervisor")
    child.wait()
    run = make_run(tmp_path, "a", state="running", pids=[record])
    assert run.state == "lost"
    assert run.summary()["state"] == "lost"


def test_reused_pid_is_not_mistaken_for_the_run(tmp_path: Path) -> None:
    me = describe(psutil.Process(), "supervisor")
    run = make_run(tmp_path, "a", state="running", pids=[{**me, "create_time": me["create_time"] - 1000}])
    held = lock(run.supervisor_lock)
    assert run.state == "lost"
    run.write_status(pids=[me])
    assert run.state == "running"
    held.close()


def test_a_copy_of_a_live_run_does_not_own_the_originals_processes(tmp_path: Path) -> None:
    me = describe(psutil.Process(), "supervisor")
    original = make_run(tmp_path, "a", state="running", pids=[me])
    held = lock(original.supervisor_lock)
    copy = RunDir(tmp_path / "a-copy")
    shutil.copytree(original.path, copy.path)
    assert original.state == "running" and original.alive_processes()
    assert copy.state == "lost" and copy.alive_processes() == [], "stop and resume of the copy never touch the original's processes"
    held.close()


def test_final_state_is_kept_and_fresh_queued_run_is_not_lost(tmp_path: Path) -> None:
    assert make_run(tmp_path, "a", state="failed", pids=[]).state == "failed"
    assert make_run(tmp_path, "b", state="queued", created_at=time.time()).state == "queued"
    stale = make_run(tmp_path, "c")
    stale.status_json.write_text(json.dumps({"state": "queued", "created_at": time.time() - 3600, "updated_at": time.time() - 3600}))
    assert stale.state == "lost"


def test_list_and_resolve_runs(tmp_path: Path) -> None:
    old = make_run(tmp_path, "dog-20250101-000000", state="finished", created_at=1.0)
    new = make_run(tmp_path, "cat-20250102-000000", state="finished", created_at=2.0)
    (tmp_path / "not-a-run").mkdir()
    assert list_runs(tmp_path) == [new, old]
    assert resolve_run("dog-20250101-000000", tmp_path) == old
    assert resolve_run("cat", tmp_path) == new
    assert resolve_run(str(old.path), tmp_path / "elsewhere") == old
    with pytest.raises(UserError, match=r"no run 'horse'.*sdtui runs"):
        resolve_run("horse", tmp_path)
    assert list_runs(tmp_path / "missing") == []


def test_run_ids_and_taken_ids(tmp_path: Path) -> None:
    assert re.fullmatch(r"sks-dog-lora-\d{8}-\d{6}", new_run_id("sks dog/lora"))
    first = create_run_dir(tmp_path, "x")
    second = create_run_dir(tmp_path, "x")
    assert first.path.is_dir() and second.path.is_dir() and first != second
    assert second.id.startswith(first.id)


def test_latest_checkpoint_ignores_unfinished_tmp_folder(tmp_path: Path) -> None:
    run = make_run(tmp_path, "a", state="failed")
    for name in ("step-10", "step-20"):
        (run.checkpoints / name).mkdir(parents=True)
        (run.checkpoints / name / "state.json").write_text(json.dumps({"step": int(name[5:])}))
    (run.checkpoints / ".tmp-step-30").mkdir()
    (run.checkpoints / ".tmp-step-30" / "state.json").write_text("{")
    assert run.latest_checkpoint() == run.checkpoints / "step-20"


def test_last_step_record_reads_the_end_only(tmp_path: Path) -> None:
    run = make_run(tmp_path, "a", state="running")
    lines = [json.dumps({"type": "step", "step": i, "loss": 1.0 / i}) for i in range(1, 5000)]
    run.metrics.write_text("\n".join(lines) + "\n" + '{"type": "event", "message": "x"}\n{"type": "st')
    assert run.last_step_record()["step"] == 4999


def test_a_request_acknowledged_earlier_in_the_same_poll_counts(tmp_path: Path) -> None:
    from core.launch.control import acknowledged

    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.write_status(state="running", control_ack={"id": "b", "action": "sample", "at": 1.0}, control_done=["a", "b"])
    assert acknowledged(run, "a") and acknowledged(run, "b")
    assert not acknowledged(run, "c")


def test_every_state_a_run_is_shown_in_is_either_live_or_ended() -> None:
    assert set(LIVE_STATES) | set(ENDED_STATES) == set(STATES) | {LOST, STALLED}
    assert not set(LIVE_STATES) & set(ENDED_STATES)
    assert "stalled" in LIVE_STATES and {"lost", "finished", "failed", "stopped"} == set(ENDED_STATES)


def test_delete_run_removes_the_run_folder_only_and_refuses_a_live_run(tmp_path: Path) -> None:
    import time as clock

    from core.errors import UserError
    from core.runs.listing import delete_run
    from tests.tui_fixtures import make_run

    runs = tmp_path / "runs"
    ended = make_run(runs, "old-20251009-090000", "failed", steps=5, total=10)
    live = make_run(runs, "live-20251009-100000", "running", steps=5, total=10, created=clock.time())
    status = json.loads((live / "status.json").read_text())
    (live / "status.json").write_text(json.dumps({**status, "updated_at": clock.time() + 3600}))
    beside = runs / "notes.txt"
    beside.write_text("mine")
    with pytest.raises(UserError, match="stop it first"):
        delete_run(RunDir(live))
    assert live.is_dir()
    delete_run(RunDir(ended))
    assert not ended.exists() and live.is_dir() and beside.read_text() == "mine"
    with pytest.raises(UserError, match="not a run folder"):
        delete_run(RunDir(tmp_path))


def test_resume_point_names_the_checkpoint_step_or_the_start(tmp_path: Path) -> None:
    from core.launch.start import resume_point
    from tests.tui_fixtures import make_run

    run = RunDir(make_run(tmp_path / "runs", "r-20251009-090000", "failed", steps=30, total=100))
    assert resume_point(run) == "from the start (it has no checkpoint)"
    for step in (10, 20):
        (run.checkpoints / f"step-{step}").mkdir(parents=True)
        (run.checkpoints / f"step-{step}" / "state.json").write_text(json.dumps({"step": step}))
    (run.checkpoints / ".tmp-step-30").mkdir()
    assert resume_point(run) == "from its checkpoint at step 20"


def test_a_run_active_within_the_shortest_stall_limit_is_not_stalled_without_reading_its_metrics(tmp_path: Path, monkeypatch) -> None:
    import core.runs.rundir as runs_module
    from tests.tui_fixtures import make_run

    run = RunDir(make_run(tmp_path / "runs", "r-20251009-090000", "running", steps=30, total=100))
    read = []
    real = runs_module.tail_records
    monkeypatch.setattr(runs_module, "tail_records", lambda path, *a: read.append(path) or real(path, *a))
    now = time.time()
    assert run.stalled_for({"updated_at": now}) is None
    assert read == []  # the dashboard asks every second: a run that just wrote needs no parse of metrics.jsonl
    os.utime(run.metrics, (now - 3600, now - 3600))
    assert run.stalled_for({"updated_at": now - 3600}) > 3000
    assert read == [run.metrics]


def test_a_request_written_by_the_cli_is_read_and_acknowledged_through_one_control_format(tmp_path: Path) -> None:
    from core.launch.control import acknowledged, request
    from core.runs.control_file import ControlReader

    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.write_status(state="running", attempt_id="a1")
    rid = request(run, "save")
    reader = ControlReader(run.control_json, attempt="a1")
    assert [(r["id"], r["action"]) for r in reader.pending()] == [(rid, "save")]
    assert not acknowledged(run, rid)
    run.write_status(**reader.acknowledge(reader.pending(), 5.0))
    assert acknowledged(run, rid) and reader.pending() == []
    assert ControlReader(run.control_json, attempt="a2").pending() == []  # another attempt never takes it
