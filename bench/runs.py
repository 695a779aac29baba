"""What the trainer benchmarks share: a run folder for the sdtui trainer, and a training child watched step by step.

``bench_trainer`` (tiny model), ``bench_real_cpu`` (real architectures on the CPU),
``bench_gpu`` and ``profile_step`` all write their run folders with :func:`write_run` and read
the JSON lines with :func:`read_jsonl`; the two CPU comparisons run each side with
:func:`run_watched` in the environment of :func:`child_env`.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import with_bytecode

REPO = Path(__file__).resolve().parents[1]


def write_run(run_dir: Path, model: Path, dataset: Path, family: str, method: str, settings: dict[str, Any], steps: int, learning_rate: float = 1e-5) -> Path:
    """A run folder with run.toml for the sdtui trainer: step mode, nothing saved or sampled on the way."""
    from core.config import new_config, save_config

    subsets = []
    for folder in sorted(p for p in dataset.iterdir() if p.is_dir()):
        repeats, _, token = folder.name.partition("_")
        subsets.append({"path": str(folder), "repeats": int(repeats), "token": token, "is_reg": False})
    config = new_config(
        name="bench",
        model_path=str(model),
        family=family,
        method=method,
        subsets=subsets,
        settings=dict(settings),
        schedule={
            "epochs": 0,
            "max_steps": steps,
            "learning_rate": learning_rate,
            "lr_scheduler": "constant",
            "save_every_epochs": 0,
            "save_every_steps": 0,
            "sample_every_steps": 0,
            "sample_at_start": False,
        },
        prompts=[],
    )
    run_dir.mkdir(parents=True)
    save_config(config, run_dir / "run.toml")
    return run_dir


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The complete lines of a JSON-lines file (a killed writer may have left a partial last line)."""
    text = path.read_text(encoding="utf-8")
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines() if line.strip()]


def child_env() -> dict[str, str]:
    """Offline, repo importable, one compute thread each.

    One thread, because this machine's two cores are shared: with two OpenMP threads a busy
    neighbour descheduling one of them makes every parallel region wait (steps measured 4-8 s
    instead of 1 s under a load of 8), and both sides would mostly measure the neighbours.
    """
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return with_bytecode(env)


def run_watched(
    argv: list[str],
    jsonl: Path,
    what: str,
    warmup: int,
    steps: int,
    env: dict[str, str] | None = None,
    kill_after: bool = False,
) -> dict[str, float]:
    """Run a training child, watching its JSON lines; wall and CPU seconds over steps ``warmup``..``steps``.

    ``first_seen_s`` is when the first step line appeared. ``kill_after`` ends the child once step ``steps`` is seen (a real-size full fine-tune would
    otherwise spend minutes writing its final model, which nobody measures).

    CPU seconds count the child and every process under it (data loader workers included), so
    the figure holds when other work shares the machine; the wall seconds are what a user waits.
    """
    import psutil

    start = time.perf_counter()
    errors = tempfile.TemporaryFile("w+", encoding="utf-8")  # noqa: SIM115 - closed below; a file, not a pipe: a chatty child never blocks on it
    proc = subprocess.Popen(argv, cwd=REPO, env=env or child_env(), stdout=subprocess.DEVNULL, stderr=errors, text=True)
    watched = psutil.Process(proc.pid)
    marks: dict[int, tuple[float, float]] = {}
    offset = 0
    first_seen = None
    try:
        while proc.poll() is None and steps not in marks:
            offset, seen = _new_steps(jsonl, offset)
            if seen and first_seen is None:
                first_seen = time.perf_counter() - start
            for step in seen:
                if step in (warmup, steps):
                    marks[step] = (time.perf_counter(), _tree_cpu(watched))
            time.sleep(0.01)
        if kill_after and steps in marks and proc.poll() is None:
            proc.kill()
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        errors.seek(0)
        stderr = errors.read()
        errors.close()
    if (proc.returncode != 0 and not (kill_after and len(marks) == 2)) or len(marks) < 2:
        tail = (stderr.strip().splitlines() or ["no error output"])[-1]
        raise RuntimeError(f"{what} failed (exit {proc.returncode}): {tail}")
    (t0, c0), (t1, c1) = marks[warmup], marks[steps]
    return {"wall": t1 - t0, "cpu": c1 - c0, "process_s": time.perf_counter() - start, "first_seen_s": first_seen}


def _new_steps(path: Path, offset: int) -> tuple[int, list[int]]:
    """Step numbers of the complete new lines of a JSON lines file since ``offset``."""
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except FileNotFoundError:
        return offset, []
    end = data.rfind(b"\n") + 1
    steps = []
    for line in data[:end].splitlines():
        record = json.loads(line)
        if record.get("type", "step") == "step" and "step" in record:
            steps.append(int(record["step"]))
    return offset + end, steps


def _tree_cpu(proc: Any) -> float:
    """User + system seconds of ``proc``, its reaped children and its live descendants."""
    import psutil

    total = 0.0
    try:
        times = proc.cpu_times()
        total += times.user + times.system + times.children_user + times.children_system
        for child in proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                times = child.cpu_times()
                total += times.user + times.system
    except psutil.Error:
        pass
    return total
