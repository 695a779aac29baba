"""The supervisor's decisions: final state, error summary from the log, the lock; process-tree kills."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil

from core import procs
from core.launch.control import request
from core.launch.supervisor import error_summary, final_state, is_locked, lock_run, log_tail
from core.runs.control_file import stop_requested
from core.runs.rundir import RunDir

TORCHRUN_LOG = """\
Traceback (most recent call last):
  File "core/train/loop.py", line 10, in main
[rank0]: RuntimeError: CUDA error: an illegal memory access was encountered
E1121 12:00:00.000 torch/distributed/elastic/multiprocessing/api.py:900] failed (exitcode: 1)
Traceback (most recent call last):
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
subprocess.CalledProcessError: Command '['python', '-m', 'core.train']' returned non-zero exit status 1.
"""


def test_final_state_never_downgrades_the_trainer() -> None:
    assert final_state("stopped", 1, stop_requested=False) == "stopped"
    assert final_state("failed", 0, stop_requested=True) == "failed"
    assert final_state("running", -15, stop_requested=True) == "stopped"
    assert final_state("running", 0, stop_requested=False) == "finished"
    assert final_state("running", 1, stop_requested=False) == "failed"


def test_error_summary_names_the_root_cause_not_the_wrapper() -> None:
    assert error_summary(TORCHRUN_LOG.splitlines()) == "[rank0]: RuntimeError: CUDA error: an illegal memory access was encountered"
    assert error_summary(["just a line", "last words"]) == "last words"
    assert "without output" in error_summary([])


def test_log_tail_strips_rank_prefixes_and_starts_at_the_attempt(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    log.write_text("old attempt\n" + "".join(f"[rank1]: line {i}\n" for i in range(50)))
    tail = log_tail(log, lines=3, start=len("old attempt\n"))
    assert tail == ["line 47", "line 48", "line 49"]
    assert "old attempt" not in log_tail(log, lines=100, start=len("old attempt\n"))


def test_stop_request_after_start_counts(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    request(run, "save")
    assert not stop_requested(run.control_json, "", 0)
    request(run, "stop")
    assert stop_requested(run.control_json, "", time.time() - 60) and not stop_requested(run.control_json, "", time.time() + 60)


def test_lock_keeps_a_second_holder_off(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    held = lock_run(run)
    assert held is not None and is_locked(run)
    child = subprocess.run(
        [sys.executable, "-c", f"from core.launch.supervisor import is_locked; from core.runs.rundir import RunDir; print(is_locked(RunDir({str(tmp_path)!r})))"],
        capture_output=True,
        text=True,
    )
    assert child.stdout.strip() == "True"
    held.close()
    assert not is_locked(run)


def test_kill_tree_reaches_grandchildren_in_their_own_session() -> None:
    code = (
        "import subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-c', 'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)'], start_new_session=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code])
    proc = psutil.Process(parent.pid)
    deadline = time.monotonic() + 20
    while not proc.children() and time.monotonic() < deadline:
        time.sleep(0.05)
    grandchild = proc.children()[0]
    killed = procs.kill_tree([procs.describe(proc, "launcher")], term_grace_s=1.0)
    parent.wait(timeout=10)
    assert set(killed) == {parent.pid, grandchild.pid}
    assert not grandchild.is_running() or grandchild.status() == psutil.STATUS_ZOMBIE


def test_leftover_guard_finds_a_detached_process_of_the_test(tmp_path: Path) -> None:
    from tests.test_launch_support import processes_mentioning

    marker = tmp_path / "run-folder"
    stray = subprocess.Popen([sys.executable, "-c", "import time, sys; time.sleep(60)", str(marker)], start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while not processes_mentioning(str(tmp_path)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [p.pid for p in processes_mentioning(str(tmp_path))] == [stray.pid]
    finally:
        stray.kill()
        stray.wait()
    assert processes_mentioning(str(tmp_path)) == []


def test_the_failure_hint_offers_resume_only_with_a_checkpoint_and_the_log_only_when_it_says_something(tmp_path: Path) -> None:
    from core.launch.supervisor import failure_hint
    from core.runs.rundir import RunDir

    run = RunDir(tmp_path / "run-1")
    run.path.mkdir()
    hint = failure_hint(run, [])
    assert "sdtui resume" not in hint and "train.log" not in hint and f"sdtui train {run.run_toml}" in hint
    (run.checkpoints / "step-10").mkdir(parents=True)
    (run.checkpoints / "step-10" / "state.json").write_text('{"step": 10}')
    hint = failure_hint(run, ["RuntimeError: boom"])
    assert f"read {run.log}" in hint and f"sdtui resume {run.id} continues from the newest checkpoint" in hint
