"""Probe checks of a run's life (issue 19): resume has train's preflight, a live run folder
moved away, the words for killed processes and a resume right after a failure, a stop with a
frozen supervisor. Each drives the CLI, the supervisor and the tiny trainer in a scratch folder."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from bench.probe.base import Check

REPO = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}


def _sdtui(scratch: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli", *args, "--runs-dir", str(scratch / "runs")], cwd=scratch, env=_env(), capture_output=True, text=True, timeout=300)


def _status(run: Path) -> dict[str, Any]:
    try:
        return json.loads((run / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def _wait(predicate: Callable[[], Any], timeout: float = 240, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(interval)
    raise TimeoutError("timed out waiting for the run")


def _steps(run: Path) -> int:
    try:
        return (run / "metrics.jsonl").read_text().count('"type": "step"')
    except OSError:
        return 0


def _ended(run: Path) -> dict[str, Any]:
    return _wait(lambda: (s := _status(run)).get("exit_code") is not None and s.get("state") in ("finished", "failed", "stopped") and s)


def _start(scratch: Path, images: int = 40, **schedule: Any) -> Path:
    """A tiny-model run started through ``sdtui train``; its folder once it has made a step."""
    from core.train.model.tiny import build_tiny
    from tests.conftest import make_kohya
    from tests.test_launch_support import write_config

    model = build_tiny("sd1", scratch / "model")
    data = make_kohya(scratch / "data", ((images, "sks dog", 4),), (64, 64), True)
    config = write_config(scratch, model, data, {"epochs": 1, **schedule})
    done = _sdtui(scratch, "train", str(config))
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip())
    run = scratch / "runs" / done.stdout.strip()
    _wait(lambda: _steps(run) >= 2)
    return run


def _role(run: Path, role: str) -> psutil.Process:
    status = _status(run)
    record = next(r for r in (status.get("pids") or []) + (status.get("trainer_pids") or []) if r.get("role") == role)
    return psutil.Process(record["pid"])


def _kill_all(run: Path) -> None:
    status = _status(run)
    for record in (status.get("pids") or []) + (status.get("trainer_pids") or []):
        try:
            os.kill(record["pid"], signal.SIGKILL)
        except OSError:
            continue


def resume_checks_the_dataset(scratch: Path) -> str | None:
    """Resume with the dataset emptied is refused before it says it restarted."""
    run = _start(scratch, images=6, save_every_steps=2)
    _kill_all(run)
    for image in (scratch / "data").rglob("*.png"):
        image.unlink()
    time.sleep(1)
    done = _sdtui(scratch, "resume", run.name)
    if done.returncode != 2 or "restarted" in done.stdout or "no usable image" not in done.stderr:
        return f"resume with an emptied dataset answered rc {done.returncode}: {(done.stdout + done.stderr).strip()[-200:]}"
    return None


def moved_run_stops_at_its_new_path(scratch: Path) -> str | None:
    """``mv`` of a live run: it saves and stops at the new path with the sentence, no traceback."""
    run = _start(scratch)
    moved = scratch / "moved" / run.name
    moved.parent.mkdir()
    shutil.move(run, moved)
    final = _ended(moved)
    if final.get("state") != "stopped" or "was moved to" not in str(final.get("error")):
        return f"the moved run ended {final.get('state')}: {final.get('error')}"
    if "Traceback" in (moved / "train.log").read_text(errors="replace") or run.exists():
        return "the moved run left a traceback or wrote at the old path"
    return None


def killed_trainer_is_named(scratch: Path) -> str | None:
    """A SIGKILLed trainer is failed with "the trainer process was killed (signal 9 …)"."""
    run = _start(scratch)
    _role(run, "trainer-rank0").kill()
    final = _ended(run)
    if final.get("state") != "failed" or not str(final.get("error")).startswith("the trainer process was killed (signal 9"):
        return f"a SIGKILLed trainer ended {final.get('state')}: {final.get('error')}"
    return None


def killed_launcher_fails_and_resumes_at_once(scratch: Path) -> str | None:
    """A SIGKILLed launcher is failed (not stopped), and a resume right then is taken."""
    run = _start(scratch)
    _role(run, "launcher").kill()
    final = _ended(run)
    if final.get("state") != "failed" or "the launcher process" not in str(final.get("error")):
        return f"a SIGKILLed launcher ended {final.get('state')}: {final.get('error')}"
    done = _sdtui(scratch, "resume", run.name)
    _sdtui(scratch, "stop", run.name, "--now")
    if done.returncode != 0:
        return f"a resume right after the failure was refused: {done.stderr.strip()}"
    return None


def stop_with_a_frozen_supervisor(scratch: Path) -> str | None:
    """``sdtui stop`` with the supervisor SIGSTOPped ends within seconds once the trainer saved."""
    run = _start(scratch)
    supervisor = _role(run, "supervisor")
    supervisor.suspend()
    try:
        started = time.monotonic()
        done = _sdtui(scratch, "stop", run.name, "--grace", "120")
        took = time.monotonic() - started
    finally:
        if supervisor.is_running():
            supervisor.resume()
    if done.returncode != 0 or took > 45:
        return f"stop took {took:.0f} s (rc {done.returncode}): {done.stdout.strip()}"
    return None


CHECKS = [
    Check("resume runs train's preflight (emptied dataset)", resume_checks_the_dataset, slow=True),
    Check("a live run folder moved away saves and stops there", moved_run_stops_at_its_new_path, slow=True),
    Check("a SIGKILLed trainer is named as killed", killed_trainer_is_named, slow=True),
    Check("a SIGKILLed launcher is failed; a resume right after is taken", killed_launcher_fails_and_resumes_at_once, slow=True),
    Check("stop does not wait for a SIGSTOPped supervisor", stop_with_a_frozen_supervisor, slow=True),
]
