"""A run's life from the outside: resume checks what train checks, a live run folder moved away,
processes killed at each level and what the run then says, a stop with a frozen supervisor, and
the log as the user reads it. Faults are injected into real runs of the tiny model."""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path

import psutil
import pytest

from core.gpu import GpuSet
from core.launch.start import resume_run, start_run
from core.runs.rundir import RunDir
from tests.test_faults_runs import checkpoint_step, fill, kill_tree, lost_run, small_disk  # noqa: F401 (small_disk is a fixture)
from tests.test_launch_support import no_leftovers, sdtui, status, steps, wait_ended, wait_for, write_config  # noqa: F401 (no_leftovers is a fixture)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_leftovers")]
CPU = GpuSet([], reason="test: CPU only")
NOISE = [
    "Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'. Please make sure you already `pip install kernels`",
    "W1206 19:00:01.123000 123 torch/distributed/launcher/api.py:194] master_addr is only used for static rdzv_backend and when rdzv_endpoint is not specified.",
    "/x/.venv/lib/python3.12/site-packages/transformers/utils/hub.py:111: FutureWarning: Using `TRANSFORMERS_CACHE` is deprecated",
    "  warnings.warn(",
]


def long_config(tmp_path: Path, tiny_models, kohya_dataset, **schedule: int) -> Path:
    return write_config(tmp_path, tiny_models("sd1"), kohya_dataset(((40, "sks dog", 4),)), {"epochs": 1, **schedule})


def role(run: RunDir, name: str) -> psutil.Process:
    record = next(r for r in status(run.path)["pids"] + (status(run.path).get("trainer_pids") or []) if r["role"] == name)
    return psutil.Process(record["pid"])


def test_resume_refuses_an_emptied_dataset_before_saying_it_restarted(tmp_path: Path, tiny_models, kohya_dataset) -> None:
    run = lost_run(tmp_path, tiny_models, kohya_dataset, at_least=4)
    dataset = next(Path(s["path"]) for s in __import__("tomllib").loads(run.run_toml.read_text())["dataset"]["subsets"])
    for image in dataset.glob("*.png"):
        image.unlink()
    resumed = sdtui(["resume", run.id, "--runs-dir", str(tmp_path / "runs")], tmp_path)
    assert resumed.returncode == 2 and "restarted" not in resumed.stdout, resumed.stdout + resumed.stderr
    assert "has no usable image" in resumed.stderr and "Traceback" not in resumed.stderr
    assert run.state == "lost" and status(run.path).get("attempt") == 1, "nothing was started"


def test_resume_on_a_full_disk_is_refused_with_the_disk_sentence(tmp_path: Path, tiny_models, kohya_dataset, small_disk: Path) -> None:
    config = write_config(tmp_path, tiny_models("sd1"), kohya_dataset(((6, "sks dog", 4),)), {"epochs": 1, "save_every_steps": 4, "keep_checkpoints": 3})
    run = start_run(config, small_disk / "runs", gpus=CPU)
    wait_for(lambda: checkpoint_step(run) >= 4, 240, "the checkpoint of step 4")
    kill_tree(run)
    filler = fill(small_disk, 0)
    refused = sdtui(["resume", run.id, "--runs-dir", str(small_disk / "runs")], tmp_path)
    assert refused.returncode == 2 and "restarted" not in refused.stdout, refused.stdout + refused.stderr
    assert "GiB free but the run will write" in refused.stderr or "free" in refused.stderr
    assert status(run.path).get("attempt") == 1
    filler.unlink()
    resumed = resume_run(RunDir(run.path), gpus=CPU)
    assert wait_ended(resumed)["state"] == "finished"


def test_a_run_folder_moved_while_training_saves_and_stops_at_its_new_path(tmp_path: Path, tiny_models, kohya_dataset) -> None:
    run = start_run(long_config(tmp_path, tiny_models, kohya_dataset), tmp_path / "runs", gpus=CPU)
    wait_for(lambda: len(steps(run.path)) >= 3, 240, "three steps")
    moved = RunDir(tmp_path / "elsewhere" / run.id)
    moved.path.parent.mkdir()
    shutil.move(run.path, moved.path)
    final = wait_ended(moved)
    assert final["state"] == "stopped", (final.get("error"), final.get("log_tail"), moved.log.read_text(errors="replace")[-3000:])
    assert f"the run folder was moved to {moved.path}" in final["error"] and f"sdtui resume {moved.path}" in final["error"]
    assert checkpoint_step(moved) == status(moved.path)["step"] >= 3, "it saved where the folder is now"
    assert not run.path.exists(), "nothing was written at the old path"
    log = moved.log.read_text(errors="replace")
    assert "Traceback" not in log, log[-2000:]
    resumed = sdtui(["resume", str(moved.path)], tmp_path)
    assert resumed.returncode == 0 and f"from step-{checkpoint_step(moved)}" in resumed.stdout, resumed.stderr
    sdtui(["stop", str(moved.path), "--now"], tmp_path)
    wait_ended(moved)


def test_a_sigkilled_trainer_is_named_as_killed_with_where_resume_continues(tmp_path: Path, tiny_models, kohya_dataset) -> None:
    run = start_run(long_config(tmp_path, tiny_models, kohya_dataset, save_every_steps=2), tmp_path / "runs", gpus=CPU)
    wait_for(lambda: checkpoint_step(run) >= 2, 240, "a checkpoint")
    role(run, "trainer-rank0").send_signal(signal.SIGKILL)
    final = wait_ended(run)
    at = checkpoint_step(run)
    assert final["state"] == "failed", final
    assert final["error"].startswith("the trainer process was killed (signal 9 (SIGKILL)"), final["error"]
    assert f"sdtui resume {run.id} continues from step-{at}" in final["error"]
    assert not any("CalledProcessError" in line for line in final["log_tail"]), final["log_tail"]


def test_a_killed_launcher_is_failed_not_stopped_and_resume_right_after_is_taken(tmp_path: Path, tiny_models, kohya_dataset) -> None:
    run = start_run(long_config(tmp_path, tiny_models, kohya_dataset), tmp_path / "runs", gpus=CPU)
    wait_for(lambda: len(steps(run.path)) >= 3, 240, "three steps")
    role(run, "launcher").send_signal(signal.SIGKILL)
    final = wait_for(lambda: (s := status(run.path)).get("exit_code") is not None and s, 120, "the end of the attempt", interval=0.02)
    assert final["state"] == "failed", final
    assert "the launcher process (accelerate launch) was killed (signal 9 (SIGKILL)" in final["error"], final["error"]
    resumed = sdtui(["resume", run.id, "--runs-dir", str(tmp_path / "runs")], tmp_path)
    assert resumed.returncode == 0 and "restarted" in resumed.stdout, resumed.stderr
    sdtui(["stop", run.id, "--now", "--runs-dir", str(tmp_path / "runs")], tmp_path)
    wait_ended(run)


def test_a_resume_as_soon_as_the_trainer_recorded_failed_is_not_refused(tmp_path: Path, tiny_models, kohya_dataset) -> None:
    config = write_config(tmp_path, tiny_models("sd1"), kohya_dataset(((5, "sks dog", 2),)), {"epochs": 1, "learning_rate": 1e30})
    run = start_run(config, tmp_path / "runs", gpus=CPU)
    wait_for(lambda: status(run.path).get("state") == "failed", 240, "the trainer's failed", interval=0.02)
    resume_run(RunDir(run.path), gpus=CPU)  # before the fix: "already running or being started"
    assert wait_ended(run)["state"] == "failed"


def test_stop_does_not_wait_out_the_grace_for_a_frozen_supervisor(tmp_path: Path, tiny_models, kohya_dataset) -> None:
    run = start_run(long_config(tmp_path, tiny_models, kohya_dataset), tmp_path / "runs", gpus=CPU)
    wait_for(lambda: len(steps(run.path)) >= 3, 240, "three steps")
    supervisor = role(run, "supervisor")
    supervisor.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        stopped = sdtui(["stop", run.id, "--grace", "90", "--runs-dir", str(tmp_path / "runs")], tmp_path, timeout=200)
        took = time.monotonic() - started
    finally:
        if supervisor.is_running():
            supervisor.send_signal(signal.SIGCONT)
    assert stopped.returncode == 0 and "stopped (after saving)" in stopped.stdout, stopped.stdout + stopped.stderr
    assert took < 45, f"stop took {took:.0f} s"
    assert wait_ended(run, 30)["state"] == "stopped"


def test_the_users_view_of_the_log_leaves_out_library_noise_and_the_launcher_traceback(tmp_path: Path) -> None:
    from core.launch.supervisor import error_summary, log_tail
    from core.monitor.logs import LogTail, user_view

    trainer = ["Traceback (most recent call last):", '  File "/x/core/train/loop.py", line 3, in main', "    raise ValueError('bad')", "ValueError: bad"]
    launcher = [
        "Traceback (most recent call last):",
        '  File "/x/bin/accelerate", line 8, in <module>',
        "    sys.exit(main())",
        "subprocess.CalledProcessError: Command '['python', '-m', 'core.train']' returned non-zero exit status 1.",
    ]
    log = tmp_path / "train.log"
    log.write_text("\n".join(["step 1", *NOISE, *trainer, *NOISE[:1], *launcher, NOISE[0]]) + "\n")
    assert user_view(log.read_text().splitlines()) == ["step 1", *trainer]
    assert log_tail(log)[-1] == "ValueError: bad" and error_summary(log_tail(log)) == "ValueError: bad"
    assert LogTail(log).poll()[-1] == launcher[-1] and not any(n in LogTail(log).poll() for n in NOISE)
    assert len(LogTail(log, raw=True).poll()) == 1 + len(NOISE) + len(trainer) + 1 + len(launcher) + 1


def test_sdtui_logs_shows_the_error_first_and_no_noise_unless_raw(tmp_path: Path, tiny_models, kohya_dataset) -> None:
    config = write_config(tmp_path, tiny_models("sd1"), kohya_dataset(((5, "sks dog", 2),)), {"epochs": 1, "learning_rate": 1e30})
    run = start_run(config, tmp_path / "runs", gpus=CPU)
    final = wait_ended(run)
    with open(run.log, "a") as handle:
        handle.write("\n".join(NOISE) + "\n")
    shown = sdtui(["logs", run.id, "--runs-dir", str(tmp_path / "runs")], tmp_path).stdout.splitlines()
    assert shown[0] == f"error: {final['error']}"
    assert not any(n in shown for n in NOISE)
    raw = sdtui(["logs", run.id, "--raw", "--runs-dir", str(tmp_path / "runs")], tmp_path).stdout.splitlines()
    assert raw[-len(NOISE) :] == NOISE
    assert json.loads(sdtui(["status", run.id, "--json", "--runs-dir", str(tmp_path / "runs")], tmp_path).stdout)["state"] == "failed"


def test_a_killed_ddp_rank_is_named_before_the_other_ranks_closed_connection() -> None:
    from core.launch.supervisor import error_summary, final_state, killed_by, signal_name

    log = [
        "[rank0]: RuntimeError: [../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:40109",
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError:",
        "============================================================",
        "core.train FAILED",
        "Root Cause (first observed failure):",
        "[0]:",
        "  exitcode  : -9 (pid: 4242)",
        "  traceback : Signal 9 (SIGKILL) received by PID 4242",
    ]
    assert killed_by(log) == 9 and signal_name(9) == "signal 9 (SIGKILL)"
    assert killed_by(["subprocess.CalledProcessError: Command '['python']' died with <Signals.SIGKILL: 9>."]) == 9
    assert killed_by(["RuntimeError: boom", "subprocess.CalledProcessError: Command '['python']' returned non-zero exit status 1."]) is None
    assert "RuntimeError" in error_summary(log), "without a kill the cause is still the exception, not the wrapper"
    assert final_state("stopped", -9, stop_requested=False) == "failed", "a trainer stopped because its launcher was killed did not stop"
    assert final_state("stopped", -9, stop_requested=True) == "stopped"


def test_a_killed_rank_of_a_two_process_run_is_named_as_killed(tmp_path: Path, tiny_models, kohya_dataset) -> None:
    config = write_config(tmp_path, tiny_models("sd1"), kohya_dataset(((40, "sks dog", 4),)), {"epochs": 1}, distributed={"num_processes": 2, "main_process_port": 0})
    run = start_run(config, tmp_path / "runs", gpus=CPU)
    wait_for(lambda: len(steps(run.path)) >= 2, 300, "two steps of the 2-process run")
    role(run, "trainer-rank1").send_signal(signal.SIGKILL)
    final = wait_ended(run)
    assert final["state"] == "failed", final
    assert final["error"].startswith("the trainer process was killed (signal 9 (SIGKILL)"), final["error"]
