"""Runs that cannot be lost: faults injected on purpose into real runs of the tiny model.

Moved, copied and unpacked run folders, two resumes at once, junk bytes in the state files of a
live run, a full disk (a real small tmpfs), a stale stop request, a truncated status.json, a
crafted pickle in a checkpoint, a SIGSTOPped trainer, a partial metrics line and a failed resume.
Each test asserts what the user sees and that nothing is lost.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import psutil
import pytest

from core.gpu import GpuSet
from core.launch.start import start_run
from core.monitor import MetricsSeries, MetricsTail
from core.procs import alive, tree
from core.runs.rundir import RunDir
from tests.test_launch_support import env, no_leftovers, sdtui, status, steps, wait_ended, wait_for, write_config  # noqa: F401 (no_leftovers is a fixture)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_leftovers")]
CPU = GpuSet([], reason="test: CPU only")


def checkpoint_step(run: RunDir) -> int:
    latest = run.latest_checkpoint()
    return int(latest.name[5:]) if latest else 0


def kill_tree(run: RunDir) -> None:
    """kill -9 every process of the run (the machine went down)."""
    victims = tree(alive(run.processes()))
    for proc in victims:
        proc.kill()
    psutil.wait_procs(victims, timeout=10)


def lost_run(tmp_path: Path, tiny_models, kohya_dataset, at_least: int = 8, name: str = "tiny") -> RunDir:
    """A run of 24 steps, checkpoints every 4, killed -9 once its checkpoint of step ``at_least`` exists."""
    config = write_config(tmp_path, tiny_models("sd1"), kohya_dataset(((6, "sks dog", 4),)), {"epochs": 1, "save_every_steps": 4, "keep_checkpoints": 3}, name=name)
    run = start_run(config, tmp_path / "runs", gpus=CPU)
    wait_for(lambda: checkpoint_step(run) >= at_least, 240, f"the checkpoint of step {at_least}")
    kill_tree(run)
    return run


def read(path: Path) -> str:
    """A file's text, "" while it does not exist."""
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def series(run: RunDir) -> list[int]:
    """The step numbers a reader (the dashboard's series) returns for the run."""
    found = MetricsSeries()
    found.update(MetricsTail(run.metrics))
    return [int(s) for s in found.steps]


def test_moved_and_unpacked_copy_resume_each_in_its_own_folder(tmp_path: Path, tiny_models, kohya_dataset) -> None:
    run = lost_run(tmp_path, tiny_models, kohya_dataset)
    original_metrics = run.metrics.read_bytes()
    # a tarred copy unpacked at another path (another machine with the same model and dataset paths)
    archive = tmp_path / "run.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(run.path, arcname=run.id)
    elsewhere = tmp_path / "other-machine" / "runs"
    elsewhere.mkdir(parents=True)
    with tarfile.open(archive) as tar:
        tar.extractall(elsewhere, filter="data")
    copy = RunDir(elsewhere / run.id)
    # the original moved to another folder
    moved = RunDir(tmp_path / "moved" / run.id)
    moved.path.parent.mkdir()
    shutil.move(run.path, moved.path)
    first = sdtui(["resume", str(moved.path)], tmp_path)
    assert first.returncode == 0, first.stderr
    assert "restarted from step-" in first.stdout
    again = sdtui(["resume", str(moved.path)], tmp_path)
    assert again.returncode == 2 and "restarted" not in again.stdout
    # two resumes of the copy at the same moment: one starts it, the other is refused
    both = [subprocess.Popen([sys.executable, "-m", "cli", "resume", str(copy.path)], cwd=tmp_path, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    answers = [p.communicate(timeout=120) for p in both]
    codes = sorted(p.returncode for p in both)
    assert codes == [0, 2], answers
    assert sum("restarted" in out for out, _ in answers) == 1
    refused = next(err for (_, err), p in zip(answers, both) if p.returncode == 2)
    assert "sdtui" in refused and "Traceback" not in refused
    for each in (moved, copy):
        final = wait_ended(each)
        assert final["state"] == "finished", final
        assert series(each) == list(range(1, 25)), "every step once, in each folder"
        assert str(each.path) in final["command"]
    assert not run.path.exists(), "nothing was written into the old location"
    assert copy.metrics.read_bytes().startswith(original_metrics) and moved.metrics.read_bytes().startswith(original_metrics)


def test_junk_in_control_and_status_of_a_live_run_does_not_kill_it(tmp_path: Path, tiny_models, kohya_dataset) -> None:
    from tests.test_run_hygiene import huge_png

    dataset = kohya_dataset(((10, "sks dog", 4),))
    huge = huge_png(dataset / "10_sks dog" / "huge.png")
    config = write_config(tmp_path, tiny_models("sd1"), dataset, {"epochs": 1})
    run = start_run(config, tmp_path / "runs", gpus=CPU)
    wait_for(lambda: len(steps(run.path)) >= 3, 240, "three steps")
    run.control_json.write_bytes(b"\xff\xfe\x80 not json \x00")
    run.status_json.write_bytes(b"\x89PNG\r\n\x1a\n\xff")
    listed = sdtui(["runs", "--runs-dir", str(tmp_path / "runs")], tmp_path)
    assert listed.returncode == 0 and "Traceback" not in listed.stderr and run.id in listed.stdout
    saved = sdtui(["save", run.id, "--runs-dir", str(tmp_path / "runs"), "--wait", "60"], tmp_path)
    assert saved.returncode == 0 and "Traceback" not in saved.stderr, saved.stderr
    final = wait_ended(run)
    assert final["state"] == "finished", final
    assert steps(run.path)[-1] == 40
    assert json.loads(run.control_json.read_text())["requests"], "the junk control.json was replaced by a valid one"
    warned = [line for line in run.metrics.read_text().splitlines() if str(huge) in line]
    assert len(warned) == 1 and "megapixels" in warned[0], "the huge image is warned about once, by the scan's verdict"
    mask = os.umask(0)
    os.umask(mask)
    written_plainly = [run.metrics, run.log, run.heartbeat, *run.checkpoints.rglob("*.safetensors"), *run.checkpoints.rglob("*.json")]
    assert {oct(p.stat().st_mode & 0o777) for p in written_plainly if p.is_file()} == {oct(0o666 & ~mask)}


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 12 MB tmpfs (a real file system that fills up); skipped where mounting is not allowed."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()})")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave_bytes: int) -> Path:
    """Fill the disk up to ``leave_bytes`` free."""
    filler = disk / "filler"
    free = shutil.disk_usage(disk).free
    with open(filler, "wb") as handle:
        handle.write(b"\0" * max(0, free - leave_bytes))
    return filler


def test_a_full_disk_fails_with_the_sentence_keeps_the_checkpoint_and_resumes(tmp_path: Path, tiny_models, kohya_dataset, small_disk: Path) -> None:
    config = write_config(tmp_path, tiny_models("sd1"), kohya_dataset(((6, "sks dog", 4),)), {"epochs": 1, "save_every_steps": 8, "keep_checkpoints": 3}, settings={"cache_latents": False})
    run = start_run(config, small_disk / "runs", gpus=CPU)
    wait_for(lambda: "output at step 8" in read(run.metrics), 240, "the checkpoint and output of step 8")
    filler = fill(small_disk, 200 * 1024)
    final = wait_ended(run)
    assert final["state"] == "failed", final
    assert (
        f"the disk holding {run.path} is full (" in final["error"]
        and " free, the checkpoint needs " in final["error"]
        and "plus 1.00 MiB kept free for the final status and log lines" in final["error"]
    )
    assert f"free space and `sdtui resume {run.id}`" in final["error"]
    assert checkpoint_step(run) == 8, "the previous checkpoint is kept"
    assert not list(run.checkpoints.glob(".tmp-*")), "the partial checkpoint is removed"
    log = run.log.read_text(errors="replace")
    assert log.endswith("run failed\n"), log[-300:]
    from core.train.outputs.train_state import load

    assert load(run.latest_checkpoint()).state["step"] == 8
    filler.unlink()
    resumed = sdtui(["resume", run.id, "--runs-dir", str(small_disk / "runs")], tmp_path)
    assert resumed.returncode == 0 and "from step-8" in resumed.stdout, resumed.stderr
    assert wait_ended(run)["state"] == "finished"
    assert series(run) == list(range(1, 25))


def test_a_disk_too_full_for_the_output_fails_naming_the_output_and_resumes(tmp_path: Path, tiny_models, kohya_dataset, small_disk: Path) -> None:
    config = write_config(tmp_path, tiny_models("sd1"), kohya_dataset(((6, "sks dog", 4),)), {"epochs": 1, "save_every_steps": 0, "save_every_epochs": 0}, settings={"cache_latents": False})
    run = start_run(config, small_disk / "runs", gpus=CPU)
    wait_for(lambda: len(steps(run.path)) >= 3, 240, "three steps")
    # room for the final checkpoint (0.2 MB + the 1 MB margin) but then not for the output
    filler = fill(small_disk, int(1.3 * 1024 * 1024))
    final = wait_ended(run)
    assert final["state"] == "failed", final
    assert f"the disk holding {run.path} is full (" in final["error"] and "the output needs" in final["error"], final["error"]
    assert f"free space and `sdtui resume {run.id}`" in final["error"]
    assert not list(run.output.glob("*.safetensors")), "no partial output is left"
    assert run.log.read_text(errors="replace").endswith("run failed\n")
    filler.unlink()
    resumed = sdtui(["resume", run.id, "--runs-dir", str(small_disk / "runs")], tmp_path)
    assert resumed.returncode == 0 and "from step-24" in resumed.stdout, resumed.stdout + resumed.stderr
    assert wait_ended(run)["state"] == "finished"
    assert (run.output / "tiny.safetensors").stat().st_size > 0


def test_a_write_that_hits_enospc_is_recognised_as_a_full_disk(small_disk: Path) -> None:
    import torch

    from core.train.disk import is_disk_full
    from core.train.outputs import train_state as checkpoint

    fill(small_disk, 64 * 1024)
    with pytest.raises(Exception) as caught:  # noqa: PT011 - the library picks the type; is_disk_full judges it
        checkpoint._write(small_disk / ".tmp-step-1", {"w": torch.zeros(200_000)}, {}, "{}", {"step": 1})
    assert is_disk_full(caught.value), repr(caught.value)


def test_a_stale_stop_request_does_not_stop_the_resumed_run(tmp_path: Path, tiny_models, kohya_dataset) -> None:
    run = lost_run(tmp_path, tiny_models, kohya_dataset)
    shown = json.loads(sdtui(["status", run.id, "--json", "--runs-dir", str(tmp_path / "runs")], tmp_path).stdout)
    assert shown["state"] == "lost" and shown.get("exit_code") is None and "exit code was not recorded" in shown["exit_unknown"]
    old = status(run.path)
    stale = [
        {"id": "stale-with-attempt", "action": "stop", "at": time.time(), "attempt": old["attempt_id"]},
        {"id": "stale-without", "action": "stop", "at": time.time() - 5},
    ]
    run.control_json.write_text(json.dumps({"requests": stale}))
    resumed = sdtui(["resume", run.id, "--runs-dir", str(tmp_path / "runs")], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    final = wait_ended(run)
    assert final["state"] == "finished", final
    assert steps(run.path)[-1] == 24
    assert not any("stop requested" in (r.get("message") or "") for r in map(json.loads, run.metrics.read_text().splitlines()[-40:]) if isinstance(r, dict))


def test_a_truncated_status_is_rebuilt_and_the_run_resumes_from_the_folder_alone(tmp_path: Path, tiny_models, kohya_dataset) -> None:
    config = write_config(tmp_path, tiny_models("sd1"), kohya_dataset(((6, "sks dog", 4),)), {"epochs": 1, "save_every_steps": 4})
    runs = tmp_path / "runs"
    run = start_run(config, runs, gpus=CPU)
    wait_for(lambda: checkpoint_step(run) >= 4, 240, "a checkpoint")
    stopped = sdtui(["stop", run.id, "--runs-dir", str(runs)], tmp_path)
    assert stopped.returncode == 0, stopped.stderr
    at = checkpoint_step(run)
    text = run.status_json.read_text()
    run.status_json.write_text(text[: len(text) // 3])
    listed = sdtui(["runs", "--runs-dir", str(runs)], tmp_path)
    assert f"{run.id}  stopped" in listed.stdout, listed.stdout
    assert "rebuilt from the folder" in listed.stdout
    again = sdtui(["stop", run.id, "--runs-dir", str(runs)], tmp_path)
    assert again.returncode == 2 and "already ended (stopped)" in again.stderr and "terminating" not in again.stderr
    run.status_json.write_bytes(b"")
    resumed = sdtui(["resume", run.id, "--runs-dir", str(runs)], tmp_path)
    assert resumed.returncode == 0 and f"from step-{at}" in resumed.stdout, resumed.stderr
    final = wait_ended(run)
    assert final["state"] == "finished" and final["step"] == 24
    assert series(run) == list(range(1, 25))


def test_a_crafted_pickle_in_a_checkpoint_never_runs(tmp_path: Path, tiny_models, kohya_dataset) -> None:
    import pickle

    run = lost_run(tmp_path, tiny_models, kohya_dataset, at_least=4)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    latest = run.latest_checkpoint()
    assert not (latest / "objects.pt").exists() and (latest / "objects.json").is_file(), "checkpoints hold no pickle"
    (latest / "objects.json").unlink()
    (latest / "objects.pt").write_bytes(pickle.dumps({"optimizer": Payload()}))
    resumed = sdtui(["resume", run.id, "--runs-dir", str(tmp_path / "runs")], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    final = wait_ended(run)
    assert final["state"] == "failed" and "never loaded because it could run code" in final["error"]
    assert not marker.exists(), "the pickle ran"
    assert final["step"] == checkpoint_step(run), "a failed resume keeps the recorded step"


def test_no_pickle_loading_anywhere_in_the_code() -> None:
    root = Path(__file__).resolve().parents[1]
    offenders = []
    for path in list((root / "core").rglob("*.py")) + list((root / "cli").rglob("*.py")) + list((root / "tui").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if "weights_only=False" in text or "pickle.load" in text or ("torch.load(" in text and "weights_only=True" not in text):
            offenders.append(str(path.relative_to(root)))
    assert offenders == []


def test_a_sigstopped_trainer_is_flagged_stalled(tmp_path: Path, tiny_models, kohya_dataset) -> None:
    from core.runs.states import STALL_MIN_S

    config = write_config(tmp_path, tiny_models("sd1"), kohya_dataset(((40, "sks dog", 4),)), {"epochs": 1})
    runs = tmp_path / "runs"
    run = start_run(config, runs, gpus=CPU)
    wait_for(lambda: len(steps(run.path)) >= 5, 240, "five steps")
    trainers = [p for p in tree(alive(run.processes())) if any("core.train" in part for part in p.cmdline())]
    assert trainers
    for proc in trainers:
        proc.send_signal(signal.SIGSTOP)
    try:
        wait_for(lambda: run.state == "stalled", STALL_MIN_S + 30, "the stalled state")
        listed = sdtui(["runs", "--runs-dir", str(runs)], tmp_path)
        assert f"{run.id}  stalled" in listed.stdout and "no step and no heartbeat" in listed.stdout
        shown = sdtui(["status", run.id, "--runs-dir", str(runs)], tmp_path)
        assert "state     stalled" in shown.stdout and f"sdtui stop {run.id}" in shown.stdout
        assert json.loads(sdtui(["status", run.id, "--json", "--runs-dir", str(runs)], tmp_path).stdout)["state"] == "stalled"
        state_line, error_line = asyncio.run(_dashboard_lines(runs, run))
        assert "STALLED" in state_line
        assert "hung or stopped" in error_line and f"sdtui stop {run.id}" in error_line
    finally:
        for proc in trainers:
            proc.send_signal(signal.SIGCONT)
    wait_for(lambda: run.state == "running", 60, "running again after SIGCONT")
    sdtui(["stop", run.id, "--now", "--runs-dir", str(runs)], tmp_path)
    wait_ended(run)


async def _dashboard_lines(runs: Path, run: RunDir) -> tuple[str, str]:
    """The dashboard's state line and error line for ``run``, as the TUI shows them."""
    from tests.tui_fixtures import until
    from tui.app import SdtuiApp
    from tui.context import AppContext

    app = SdtuiApp(AppContext(runs_dir=runs, gpu_spec="1x24GB"), start="dashboard", run=run, theme="textual-dark")
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.screen.query_one("#error").display)
        return str(app.screen.query_one("#state").render()), str(app.screen.query_one("#error").render())


def test_metrics_attempts_partial_line_and_a_failed_resume(tmp_path: Path, tiny_models, kohya_dataset) -> None:
    run = lost_run(tmp_path, tiny_models, kohya_dataset, at_least=8)
    runs = tmp_path / "runs"
    newest = checkpoint_step(run)
    before = steps(run.path)[-1]
    with open(run.metrics, "ab") as handle:
        handle.write(b'{"type": "step", "step": 99, "lo')  # a writer killed mid-line
    (run.latest_checkpoint() / "objects.json").write_text("{")  # the newest checkpoint is damaged
    failed = sdtui(["resume", run.id, "--runs-dir", str(runs)], tmp_path)
    assert failed.returncode == 0, failed.stderr
    listed = sdtui(["runs", "--runs-dir", str(runs)], tmp_path)
    assert f" {newest}/24 " in listed.stdout, listed.stdout
    assert before == newest or f" {before}/24 " not in listed.stdout, "the start-up shows the resume point, not stale steps"
    final = wait_ended(run)
    assert final["state"] == "failed" and "cannot be loaded" in final["error"]
    assert final["step"] == newest, "a failed resume does not overwrite the step with 0"
    shutil.rmtree(run.latest_checkpoint())
    older = checkpoint_step(run)
    resumed = sdtui(["resume", run.id, "--runs-dir", str(runs)], tmp_path)
    assert resumed.returncode == 0 and f"from step-{older}" in resumed.stdout
    assert wait_ended(run)["state"] == "finished"
    assert series(run) == list(range(1, 25)), "each step once for a reader"
    assert steps(run.path)[:before] == list(range(1, before + 1)), "the file itself was never rewritten"
    lines = run.metrics.read_text().splitlines()
    attempts = [json.loads(line) for line in lines if '"type": "attempt"' in line]
    assert [a["resume_step"] for a in attempts] == [0, newest, older]


def test_a_two_process_run_on_one_machine_listens_on_loopback_only(tmp_path: Path, tiny_models, kohya_dataset) -> None:
    config = write_config(tmp_path, tiny_models("sd1"), kohya_dataset(((20, "sks dog", 4),)), {"epochs": 1}, distributed={"num_processes": 2, "main_process_port": 0})
    run = start_run(config, tmp_path / "runs", gpus=CPU)
    wait_for(lambda: len(steps(run.path)) >= 2, 300, "two steps of the 2-process run")
    listening = []
    for proc in tree(alive(run.processes())):
        try:
            listening += [(proc.pid, c.laddr) for c in proc.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
        except psutil.Error:
            continue
    sdtui(["stop", run.id, "--now", "--runs-dir", str(tmp_path / "runs")], tmp_path)
    wait_ended(run)
    assert listening, "the agent's store and gloo listen somewhere"
    assert all(addr.ip in ("127.0.0.1", "::1") for _, addr in listening), listening


def test_a_killed_trainer_is_rebuilt_as_failed_from_the_folder(tmp_path: Path, tiny_models, kohya_dataset) -> None:
    run = start_run(write_config(tmp_path, tiny_models("sd1"), kohya_dataset(((10, "sks dog", 4),))), tmp_path / "runs", gpus=CPU)
    wait_for(lambda: len(steps(run.path)) >= 2, 240, "two steps")
    trainer = next(r for r in status(run.path)["trainer_pids"] if r["role"] == "trainer-rank0")
    os.kill(trainer["pid"], signal.SIGKILL)
    final = wait_ended(run)
    assert final["state"] == "failed" and final["exit_code"] != 0
    run.status_json.write_bytes(b"")
    rebuilt = json.loads(sdtui(["status", run.id, "--json", "--runs-dir", str(tmp_path / "runs")], tmp_path).stdout)
    assert rebuilt["state"] == "failed" and rebuilt["exit_code"] == final["exit_code"] and "rebuilt" in rebuilt["rebuilt"]
