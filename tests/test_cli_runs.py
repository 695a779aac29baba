"""The run CLI on a real run of the tiny model: train, runs, status, logs, pause, save, resume, stop,
and the exit-2 answers to user mistakes."""

from __future__ import annotations

import fcntl
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.runs.rundir import RunDir
from tests.test_launch_support import env, no_leftovers, sdtui, status, steps, wait_for, write_config  # noqa: F401

pytestmark = pytest.mark.usefixtures("no_leftovers")


def test_unknown_run_is_exit_2(tmp_path: Path) -> None:
    for command in (["status", "nope"], ["logs", "nope"], ["stop", "nope"], ["resume", "nope"], ["pause", "nope"]):
        result = sdtui([*command, "--runs-dir", str(tmp_path)], tmp_path)
        assert result.returncode == 2 and "there is no run 'nope'" in result.stderr and "Traceback" not in result.stderr


def test_train_with_bad_config_is_exit_2(tmp_path: Path) -> None:
    result = sdtui(["train", str(tmp_path / "missing.toml"), "--runs-dir", str(tmp_path / "runs")], tmp_path)
    assert result.returncode == 2 and "missing.toml does not exist" in result.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_runs_of_an_empty_folder(tmp_path: Path) -> None:
    result = sdtui(["runs", "--runs-dir", str(tmp_path)], tmp_path)
    assert result.returncode == 0 and "no runs" in result.stdout
    assert json.loads(sdtui(["runs", "--json", "--runs-dir", str(tmp_path)], tmp_path).stdout) == []


@pytest.mark.slow
def test_a_run_from_train_to_stop(tmp_path: Path, tiny_models, kohya_dataset) -> None:
    config = write_config(tmp_path, tiny_models("sd1"), kohya_dataset(((40, "sks dog", 4),)), {"epochs": 1})
    runs = tmp_path / "runs"
    code = (
        "import sys, time; from cli.main import main; t = time.perf_counter(); rc = main(sys.argv[1:]); "
        "print('elapsed', time.perf_counter() - t, 'torch' in sys.modules, rc, file=sys.stderr)"
    )
    started = subprocess.run([sys.executable, "-c", code, "train", str(config), "--runs-dir", str(runs)], cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=60)
    assert started.returncode == 0, started.stderr
    run = RunDir(runs / started.stdout.strip())
    elapsed, torch_loaded, rc = started.stderr.strip().splitlines()[-1].split()[1:]
    assert float(elapsed) < 2.0 and torch_loaded == "False" and rc == "0"
    assert "runs on the CPU" in started.stderr
    assert {p.name for p in run.path.iterdir()} >= {"run.toml", "plan.json", "accelerate.yaml", "status.json", "train.log"}
    assert json.loads(run.plan_json.read_text())["run"]["total_steps"] == 160

    wait_for(lambda: len(steps(run.path)) >= 2, 300, "two training steps")
    rows = json.loads(sdtui(["runs", "--json", "--runs-dir", str(runs)], tmp_path).stdout)
    assert rows[0]["id"] == run.id and rows[0]["state"] == "running" and rows[0]["total_steps"] == 160 and rows[0]["loss"] is not None

    again = sdtui(["resume", run.id, "--runs-dir", str(runs)], tmp_path)
    assert again.returncode == 2 and "nothing to resume" in again.stderr

    paused = sdtui(["pause", run.id, "--runs-dir", str(runs)], tmp_path)
    assert paused.returncode == 0 and "pause acknowledged" in paused.stdout
    wait_for(lambda: status(run.path).get("state") == "paused", 30, "the paused state")
    held = steps(run.path)[-1]
    saved = sdtui(["save", run.id, "--runs-dir", str(runs)], tmp_path)
    assert saved.returncode == 0 and "save acknowledged (a manual checkpoint: kept beyond keep_checkpoints" in saved.stdout
    time.sleep(2)
    assert steps(run.path)[-1] == held, "a paused run does not step"
    assert run.latest_checkpoint() is not None and run.latest_checkpoint().name == f"step-{held}"

    resumed = sdtui(["resume", run.id, "--runs-dir", str(runs)], tmp_path)
    assert resumed.returncode == 0 and "asked to resume" in resumed.stdout
    wait_for(lambda: steps(run.path)[-1] > held, 60, "training to go on after resume")

    with open(run.stop_lock, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        busy = sdtui(["stop", run.id, "--runs-dir", str(runs)], tmp_path)
    assert busy.returncode == 2 and "another sdtui stop is already stopping" in busy.stderr

    follower = subprocess.Popen([sys.executable, "-m", "cli", "logs", run.id, "-f", "--runs-dir", str(runs)], cwd=tmp_path, env=env(), stdout=subprocess.PIPE, text=True)
    stopped = sdtui(["stop", run.id, "--runs-dir", str(runs)], tmp_path, timeout=240)
    assert stopped.returncode == 0 and f"{run.id} stopped (after saving)" in stopped.stdout, stopped.stderr
    final = status(run.path)
    assert final["state"] == "stopped" and not run.alive_processes()
    assert run.latest_checkpoint().name == f"step-{final['step']}"
    out, _ = follower.communicate(timeout=30)
    assert follower.returncode == 0 and "run stopped" in out

    twice = sdtui(["stop", run.id, "--runs-dir", str(runs)], tmp_path)
    assert twice.returncode == 2 and "has already ended (stopped)" in twice.stderr
    pause_ended = sdtui(["pause", run.id, "--runs-dir", str(runs)], tmp_path)
    assert pause_ended.returncode == 2 and f"sdtui resume {run.id}" in pause_ended.stderr


@pytest.mark.slow
def test_stop_now_terminates_without_saving(tmp_path: Path, tiny_models, kohya_dataset) -> None:
    config = write_config(tmp_path, tiny_models("sd1"), kohya_dataset(((40, "sks dog", 4),)), {"epochs": 1})
    runs = tmp_path / "runs"
    run_id = sdtui(["train", str(config), "--runs-dir", str(runs), "--set", "schedule.max_steps=50"], tmp_path).stdout.strip()
    run = RunDir(runs / run_id)
    assert "max_steps = 50" in run.run_toml.read_text()
    assert json.loads(run.plan_json.read_text())["run"]["total_steps"] == 50
    wait_for(lambda: len(steps(run.path)) >= 1, 300, "a training step")
    stopped = sdtui(["stop", run_id, "--now", "--runs-dir", str(runs)], tmp_path, timeout=120)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stderr
    assert status(run.path)["state"] == "stopped" and not run.alive_processes()
    assert run.latest_checkpoint() is None
    runs_view = sdtui(["runs", "--runs-dir", str(runs)], tmp_path).stdout
    assert f"{run_id}  stopped" in runs_view

    again = sdtui(["train", str(run.run_toml), "--runs-dir", str(runs)], tmp_path)
    assert again.returncode == 0, again.stderr
    copy = RunDir(runs / again.stdout.strip())
    first, _, rest = copy.run_toml.read_text().partition("\n")
    assert copy.id != run_id and rest == run.run_toml.read_text().partition("\n")[2]
    assert first == f"# sdtui run config; start it with: sdtui train {copy.run_toml}", "the header names the file itself"
    wait_for(lambda: any(r["role"] == "launcher" for r in copy.processes()), 60, "the second run's launcher")
    assert sdtui(["stop", copy.id, "--now", "--runs-dir", str(runs)], tmp_path, timeout=120).returncode == 0
    assert status(copy.path)["state"] == "stopped" and not copy.alive_processes()


def _fake_run(runs: Path, name: str, **fields: object) -> RunDir:
    """A run folder as a crashed machine leaves it (no training needed)."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run = RunDir(runs / name)
    run.path.mkdir(parents=True)
    run.run_toml.write_text('name = "x"\n')
    run.log.write_text("".join(f"log line {i}\n" for i in range(100)))
    run.write_status(pids=[{"pid": dead.pid, "create_time": 1.0, "role": "supervisor"}], step=7, total_steps=20, **fields)
    return run


def test_lost_and_ended_runs_get_clear_answers(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    lost = _fake_run(runs, "lost-20250101-000000", state="running", created_at=1.0)
    done = _fake_run(runs, "done-20250102-000000", state="finished", created_at=2.0)
    shown = sdtui(["status", lost.id, "--runs-dir", str(runs)], tmp_path)
    assert shown.returncode == 0 and "state     lost" in shown.stdout and f"sdtui resume {lost.id}" in shown.stdout
    assert "step      7/20" in shown.stdout
    assert json.loads(sdtui(["status", lost.id, "--json", "--runs-dir", str(runs)], tmp_path).stdout)["state"] == "lost"
    table = sdtui(["runs", "--runs-dir", str(runs)], tmp_path).stdout.splitlines()
    assert table[0] == f"runs in {runs} (from --runs-dir)"
    assert table[2].startswith(done.id) and "finished" in table[2] and "7/20" in table[2]
    assert table[3].startswith(lost.id) and f"continue with: sdtui resume {lost.id}" in table[3]
    finished = sdtui(["resume", done.id, "--runs-dir", str(runs)], tmp_path)
    assert finished.returncode == 2 and "has finished and resuming it would replace its outputs; start a new run with its config (sdtui train" in finished.stderr
    saving = sdtui(["save", lost.id, "--runs-dir", str(runs)], tmp_path)
    assert saving.returncode == 2 and f"is lost, so it cannot save; sdtui resume {lost.id}" in saving.stderr
    logs = sdtui(["logs", str(lost.path), "-n", "3"], tmp_path)
    assert logs.returncode == 0 and logs.stdout.splitlines() == ["log line 97", "log line 98", "log line 99"]


def test_status_names_the_output_files_with_full_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cli.main import main
    from tests.tui_fixtures import make_run

    run = make_run(tmp_path / "runs", "shapes-lora-20251009-090000", "finished")
    (run / "output" / "diffusers").mkdir(parents=True)
    kohya, diffusers = run / "output" / "shapes.safetensors", run / "output" / "diffusers" / "pytorch_lora_weights.safetensors"
    kohya.write_bytes(b"x")
    diffusers.write_bytes(b"x")
    RunDir(run).write_status(outputs=[str(kohya), str(diffusers)])
    assert main(["--runs-dir", str(tmp_path / "runs"), "status", run.name]) == 0
    out = capsys.readouterr().out
    assert f"output    {kohya}\n          {diffusers}\n" in out
    assert main(["--runs-dir", str(tmp_path / "runs"), "status", run.name, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["outputs"] == [str(kohya), str(diffusers)]


def test_status_shows_a_failed_sample(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cli.main import main
    from tests.tui_fixtures import make_run

    run = make_run(tmp_path / "runs", "shapes-lora-20251009-090000", "finished")
    RunDir(run).write_status(sample_error="sampling at step 10 failed (SampleError: bad); training continues")
    assert main(["--runs-dir", str(tmp_path / "runs"), "status", run.name]) == 0
    assert "samples   sampling at step 10 failed (SampleError: bad); training continues\n" in capsys.readouterr().out


def test_status_shows_the_start_up_phase_with_its_time_so_far(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cli.main import main
    from tests.tui_fixtures import make_run

    run = make_run(tmp_path / "runs", "starting-20251009-120000", "starting", steps=0, total=100, created=time.time())
    phase = {"name": "cache_latents", "label": "caching latents", "done": 1, "total": 9, "unit": "images", "eta_s": 410.0, "elapsed_s": 125.0}
    RunDir(run).write_status(phase=phase)
    assert main(["--runs-dir", str(tmp_path / "runs"), "status", run.name]) == 0
    assert "phase     caching latents 1/9 images, 6m 50s left, 2m 05s so far\n" in capsys.readouterr().out
