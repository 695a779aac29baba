"""Faults done for real with the real trainer on the tiny model: hang-ups, kill -9, crashes, NaN."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from core.gpu import GpuSet
from core.launch.start import start_run
from core.procs import alive, tree
from core.runs.rundir import RunDir
from tests.test_launch_support import env, no_leftovers, sdtui, steps, wait_ended, wait_for, write_config  # noqa: F401 (no_leftovers is a fixture)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_leftovers")]
CPU = GpuSet([], reason="test: CPU only")


def test_run_survives_sighup_and_sigkill_of_the_launching_shell(tmp_path: Path, tiny_models, kohya_dataset) -> None:
    config = write_config(tmp_path, tiny_models("sd1"), kohya_dataset(((3, "sks dog", 3),)), {"epochs": 1})
    runs = tmp_path / "runs"
    shell = subprocess.Popen(
        ["bash", "-c", '"$0" -m cli train "$1" --runs-dir "$2"; sleep 600', sys.executable, str(config), str(runs)],
        env=env(),
        cwd=tmp_path,
        start_new_session=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    run_id = shell.stdout.readline().strip()
    run = RunDir(runs / run_id)
    wait_for(lambda: any(r["role"] == "launcher" for r in run.processes()), 60, "the launcher to start")
    session = os.getsid(shell.pid)
    supervisor = next(r["pid"] for r in run.processes() if r["role"] == "supervisor")
    assert os.getsid(supervisor) == supervisor != session, "the supervisor leads a session of its own"
    os.kill(shell.pid, signal.SIGKILL)
    os.killpg(session, signal.SIGHUP)
    shell.wait()
    for proc in tree(alive(run.processes())):
        proc.send_signal(signal.SIGHUP)
    final = wait_ended(run)
    assert final["state"] == "finished" and final["exit_code"] == 0
    assert steps(run.path)[-1] == final["total_steps"] == 9


def test_killed_tree_is_lost_and_resume_continues_from_the_newest_checkpoint(tmp_path: Path, tiny_models, kohya_dataset) -> None:
    config = write_config(tmp_path, tiny_models("sd1"), kohya_dataset(((6, "sks dog", 4),)), {"epochs": 1, "save_every_steps": 4, "keep_checkpoints": 2})
    run = start_run(config, tmp_path / "runs", gpus=CPU)
    wait_for(lambda: (c := run.latest_checkpoint()) is not None and int(c.name[5:]) >= 8, 180, "the checkpoint of step 8")
    victims = tree(alive(run.processes()))
    assert {"supervisor", "launcher"} <= {r["role"] for r in run.processes()}
    for proc in victims:
        proc.kill()
    psutil.wait_procs(victims, timeout=10)
    before = steps(run.path)
    checkpoint = int(run.latest_checkpoint().name[5:])
    assert before[-1] - checkpoint <= 4, "at most one save interval is lost"
    listed = sdtui(["runs", "--runs-dir", str(tmp_path / "runs")], tmp_path)
    assert f"{run.id}  lost" in listed.stdout and f"sdtui resume {run.id}" in listed.stdout
    # A kill during a checkpoint write leaves a .tmp- folder: it must be ignored, the previous one used.
    partial = run.checkpoints / f".tmp-step-{checkpoint + 4}"
    partial.mkdir()
    (partial / "state.json").write_text("{")
    resumed = sdtui(["resume", run.id, "--runs-dir", str(tmp_path / "runs")], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"from step-{checkpoint}" in resumed.stdout
    final = wait_ended(run)
    after = steps(run.path)[len(before) :]
    assert final["state"] == "finished" and final["attempt"] == 2
    assert after[0] == checkpoint + 1 and after[-1] == final["total_steps"] == 24
    assert after == list(range(checkpoint + 1, 25))


def test_trainer_crash_is_failed_with_error_and_log_lines(tmp_path: Path, tiny_models, kohya_dataset) -> None:
    model = tmp_path / "broken-model"
    shutil.copytree(tiny_models("sd1"), model)
    for weights in (model / "unet").glob("*.safetensors"):
        weights.write_bytes(b"\0" * 64)
    config = write_config(tmp_path, model, kohya_dataset())
    run = start_run(config, tmp_path / "runs", gpus=CPU)
    final = wait_ended(run)
    assert final["state"] == "failed" and final["exit_code"] != 0 and final["error"]
    shown = sdtui(["status", run.id, "--runs-dir", str(tmp_path / "runs")], tmp_path)
    assert shown.returncode == 0
    assert "state     failed" in shown.stdout and "error" in shown.stdout and "last lines of train.log" in shown.stdout
    as_json = json.loads(sdtui(["status", run.id, "--json", "--runs-dir", str(tmp_path / "runs")], tmp_path).stdout)
    assert as_json["state"] == "failed" and as_json["log_tail"]


def test_nan_loss_fails_with_a_hint(tmp_path: Path, tiny_models, kohya_dataset) -> None:
    config = write_config(tmp_path, tiny_models("sd1"), kohya_dataset(((5, "sks dog", 2),)), {"epochs": 1, "learning_rate": 1e30})
    run = start_run(config, tmp_path / "runs", gpus=CPU)
    final = wait_ended(run)
    assert final["state"] == "failed", final
    assert "nan" in final["error"].lower() or "finite" in final["error"].lower()
    assert "learning_rate" in final["hint"]
    shown = sdtui(["status", run.id, "--runs-dir", str(tmp_path / "runs")], tmp_path).stdout
    assert final["error"] in shown and "hint" in shown


def test_supervisor_lock_keeps_a_second_supervisor_off(tmp_path: Path, tiny_models, kohya_dataset) -> None:
    config = write_config(tmp_path, tiny_models("sd1"), kohya_dataset(((2, "sks dog", 2),)))
    run = start_run(config, tmp_path / "runs", gpus=CPU)
    wait_for(lambda: any(r["role"] == "launcher" for r in run.processes()), 60, "the launcher to start")
    second = subprocess.run([sys.executable, "-m", "core.launch.supervisor", str(run.path)], env=env(), capture_output=True, text=True, timeout=60)
    assert second.returncode == 2 and "another supervisor already runs" in second.stderr
    assert wait_ended(run)["state"] == "finished"
