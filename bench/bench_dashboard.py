"""Dashboard cost: CPU of ``sdtui attach RUN`` following a live run, as a share of one core.

A writer process plays the trainer: it appends ~10 ``step`` lines a second to metrics.jsonl
and a log line a second to train.log of a run folder whose status.json names it as the
running trainer. The real ``sdtui attach`` runs on a 120×40 pseudo-terminal; after its first
frame and a settling pause, its process CPU time (all threads) is sampled over the window.
ratio = target 2 % of a core / measured.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bench.bench_tui_start import bench_env, sdtui_argv
from bench.terminal import PtyProcess

REPO = Path(__file__).resolve().parents[1]
TARGET_PERCENT = 2.0
WINDOW_S = 20.0
SETTLE_S = 3.0
LINES_PER_S = 10.0

#: The trainer's stand-in: it holds the trainer lock (a run whose processes hold no lock of the folder is ``lost``).
WRITER = """
import fcntl, json, math, sys, time
run, seconds, rate = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
lock = open(run + "/trainer.lock", "a+")
fcntl.flock(lock, fcntl.LOCK_EX)
end = time.time() + seconds
step = 0
with open(run + "/metrics.jsonl", "a") as metrics, open(run + "/train.log", "a") as log:
    while time.time() < end:
        step += 1
        loss = 0.2 + 0.1 * math.exp(-step / 300) + 0.02 * math.sin(step)
        metrics.write(json.dumps({"type": "step", "time": round(time.time(), 3), "step": step, "epoch": 1 + step // 500,
            "loss": loss, "lr": 1e-4, "images_per_s": 9.8, "step_time_s": 0.102,
            "mem": [{"rank": 0, "allocated": 5_000_000_000, "peak": 7_000_000_000}]}) + "\\n")
        metrics.flush()
        if step % int(rate) == 0:
            log.write(f"step {step} loss {loss:.4f}\\n")
            log.flush()
        time.sleep(1 / rate)
"""


RUN_ID = "20261121-000000-bench-dashboard"


def make_run(runs_dir: Path) -> Path:
    """A run folder with its run.toml (the writer fills metrics.jsonl and train.log)."""
    from core.config import new_config, save_config

    run = runs_dir / RUN_ID
    run.mkdir(parents=True)
    save_config(
        new_config(name="bench-dashboard", model_path="", family="sd1", method="lora", subsets=[], settings={}, schedule={"max_steps": 100_000}),
        run / "run.toml",
    )
    return run


def mark_running(run: Path, writer: subprocess.Popen) -> None:
    """status.json in the running state with ``writer`` as the trainer (so the run is not ``lost``)."""
    from core.atomic import write_json_atomic
    from core.procs import describe

    now = time.time()
    write_json_atomic(
        run / "status.json",
        {
            "state": "running",
            "step": 0,
            "total_steps": 100_000,
            "created_at": now,
            "updated_at": now,
            "trainer_pids": [describe(psutil.Process(writer.pid), "trainer-rank0")],
        },
    )


def dashboard_cpu_percent(run_id: str, runs_dir: Path, env: dict[str, str]) -> tuple[float, float, int]:
    """(CPU % of one core over the window, seconds to the first frame, bytes drawn per second)."""
    term = PtyProcess([*sdtui_argv(), "--runs-dir", str(runs_dir), "attach", run_id], env=env, cwd=str(REPO))
    try:
        first = term.read_until(lambda out: b"loss" in out and b"step" in out, 30.0)
        if first is None:
            tail = term.output[-400:].decode("utf-8", "replace")
            raise RuntimeError(f"sdtui attach drew no dashboard within 30 s; last output: {tail!r}")
        settle_end = time.perf_counter() + SETTLE_S
        while time.perf_counter() < settle_end:
            term.drain(0.05)
        proc = psutil.Process(term.proc.pid)
        cpu0, wall0, bytes0 = _cpu(proc), time.perf_counter(), len(term.output)
        window_end = wall0 + WINDOW_S
        while time.perf_counter() < window_end:
            term.drain(0.05)
        cpu1, wall1, bytes1 = _cpu(proc), time.perf_counter(), len(term.output)
    finally:
        term.close()
    return 100.0 * (cpu1 - cpu0) / (wall1 - wall0), first, int((bytes1 - bytes0) / (wall1 - wall0))


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def main() -> list[str]:
    """Follow a run written at ~10 lines/s for the window; one result line."""
    env = bench_env()
    with tempfile.TemporaryDirectory(prefix="sdtui-bench-dash-") as tmp:
        run = make_run(Path(tmp) / "runs")
        seconds = WINDOW_S + SETTLE_S + 40.0
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(run), str(seconds), str(LINES_PER_S)])
        try:
            mark_running(run, writer)
            percent, first, rate = dashboard_cpu_percent(run.name, run.parent, env)
            with open(run / "metrics.jsonl", encoding="utf-8") as handle:
                metrics_lines = sum(1 for _ in handle)
        finally:
            writer.terminate()
            writer.wait()
    verdict = "met" if percent < TARGET_PERCENT else f"missed by {percent - TARGET_PERCENT:.1f} points"
    return [
        f"dashboard_cpu: sdtui attach following a run at {LINES_PER_S:.0f} lines/s uses {percent:.2f}% of a core over {WINDOW_S:.0f} s "
        f"(first frame {first:.2f} s, {rate} B/s drawn, {metrics_lines} metric lines written; target <{TARGET_PERCENT}% {verdict}) "
        f"ratio={TARGET_PERCENT / max(percent, 0.01):.2f}"
    ]


if __name__ == "__main__":
    for line in main():
        print(line)
