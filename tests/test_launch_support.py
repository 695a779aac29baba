"""Helpers for the launch, fault and CLI tests: a real tiny training config, the CLI as a
subprocess, waiting for states, and the guard that fails a test which leaves a process behind.

(No tests here; pytest collects nothing from this module.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil
import pytest

REPO = Path(__file__).resolve().parents[1]

#: Small, fast settings for the tiny model on the CPU.
TINY_SETTINGS: dict[str, Any] = {
    "mixed_precision": "no",
    "optimizer": "adamw",
    "resolution": 64,
    "min_bucket_reso": 64,
    "max_bucket_reso": 128,
    "bucket_reso_steps": 32,
    "lora_rank": 4,
    "lora_alpha": 4.0,
    "dataloader_workers": 0,
    "channels_last": False,
    "gradient_checkpointing": False,
    "batch_size": 1,
    "cache_latents": True,
}


def env() -> dict[str, str]:
    """The environment for CLI subprocesses: offline, one thread, this repo importable."""
    out = dict(os.environ)
    out.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    out["PYTHONPATH"] = str(REPO) + os.pathsep + out.get("PYTHONPATH", "")
    return out


def write_config(
    tmp_path: Path,
    model: Path,
    dataset: Path,
    schedule: dict[str, Any] | None = None,
    distributed: dict[str, Any] | None = None,
    name: str = "tiny",
    settings: dict[str, Any] | None = None,
) -> Path:
    """A run.toml for the tiny model on a kohya dataset (every subset folder of ``dataset``)."""
    from core.config import new_config, save_config

    subsets = []
    for folder in sorted(p for p in dataset.iterdir() if p.is_dir()):
        repeats, _, token = folder.name.partition("_")
        subsets.append({"path": str(folder), "repeats": int(repeats), "token": token})
    config = new_config(
        name,
        model,
        "sd1",
        "lora",
        subsets,
        {**TINY_SETTINGS, **(settings or {})},
        {"epochs": 1, "save_every_epochs": 0, "sample_every_steps": 0, "lr_scheduler": "constant", **(schedule or {})},
        [],
        distributed or {},
    )
    path = tmp_path / f"{name}.toml"
    save_config(config, path)
    return path


def sdtui(args: Sequence[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess."""
    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.25) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def status(run_dir: Path) -> dict[str, Any]:
    """status.json of a run folder."""
    try:
        return json.loads((run_dir / "status.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def wait_ended(run: Any, timeout: float = 300) -> dict[str, Any]:
    """Wait until a RunDir has a final state and its processes are gone; return its status."""
    wait_for(lambda: status(run.path).get("state") in ("finished", "failed", "stopped") and not run.alive_processes(), timeout, f"{run.id} to end")
    return status(run.path)


def steps(run_dir: Path) -> list[int]:
    """The step numbers of metrics.jsonl's step lines, in file order."""
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("type") == "step":
            out.append(int(record["step"]))
    return out


def processes_mentioning(text: str) -> list[psutil.Process]:
    """Live processes whose command line contains ``text`` (a test's temp folder)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if any(text in part for part in proc.info["cmdline"] or []):
                found.append(proc)
        except psutil.Error:
            continue
    return found


@pytest.fixture
def no_leftovers(tmp_path: Path) -> Iterator[None]:
    """Fail the test if any process of its runs (found by its temp folder) or any child is left; kill them."""
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    yield
    deadline = time.monotonic() + 15
    left: list[psutil.Process] = []
    while time.monotonic() < deadline:
        left = processes_mentioning(str(tmp_path)) + [p for p in psutil.Process().children(recursive=True) if p.pid not in before and p.status() != psutil.STATUS_ZOMBIE]
        if not left:
            return
        time.sleep(0.5)
    described = [f"{p.pid} {' '.join(p.cmdline()[:6])}" for p in left if p.is_running()]
    for proc in left:
        try:
            proc.kill()
        except psutil.Error:
            pass
    pytest.fail(f"processes left behind: {described}")
