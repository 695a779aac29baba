"""Opening a 1,000,000-line metrics.jsonl: the core reader against naive JSON, and the chart on screen.

* Core reader: ``MetricsSeries().update(MetricsTail(path))`` (read in chunks, msgspec, series
  into flat arrays) against ``[json.loads(line) for line in open(path)]`` and the same series
  from the dicts; ratio = naive / sdtui.
* On screen: the dashboard (``SdtuiApp`` headless, 120×40) opened on a finished run with that
  file: seconds from creating the app to the thinned chart (lines sampled across the file) and
  to the full chart (every step in the series); ratio = the 2 s target / the full chart's time.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from core.monitor.metrics import MetricsSeries, MetricsTail

LINES = 1_000_000
TARGET_S = 2.0


def write_metrics(path: Path, lines: int = LINES) -> None:
    """A metrics file shaped like the trainer's: step lines with a sample/checkpoint line now and then."""
    with open(path, "w", encoding="utf-8") as handle:
        for step in range(1, lines + 1):
            if step % 1000 == 0:
                record = {"type": "checkpoint", "time": 1763740000.0 + step, "step": step, "path": f"checkpoints/step-{step}"}
            else:
                record = {
                    "type": "step",
                    "time": 1763740000.0 + step * 0.5,
                    "step": step,
                    "epoch": step // 400,
                    "loss": 0.1 + (step % 97) / 1000,
                    "lr": 1e-4,
                    "images_per_s": 3.21,
                    "step_time_s": 0.311,
                    "mem": [{"allocated": 5_123_456_789, "peak": 7_123_456_789}],
                }
            handle.write(json.dumps(record) + "\n")


def sdtui_open(path: Path) -> tuple[float, int, float]:
    """Wall seconds for the first poll into series, the step points found, and the CPU seconds."""
    start, cpu = time.perf_counter(), time.process_time()
    series = MetricsSeries()
    series.update(MetricsTail(path))
    return time.perf_counter() - start, len(series.steps), time.process_time() - cpu


def naive_open(path: Path) -> tuple[float, int, float]:
    """Wall seconds for loading every line with json.loads and building the same series, points, CPU seconds."""
    start, cpu = time.perf_counter(), time.process_time()
    with open(path, encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle]
    series = MetricsSeries()
    series.add(records)
    return time.perf_counter() - start, len(series.steps), time.process_time() - cpu


def screen_open(run: Path, points: int) -> tuple[float, float]:
    """Seconds from creating the app to the thinned chart on screen and to the full chart."""
    import asyncio

    from core.runs.rundir import RunDir
    from tui.app import SdtuiApp
    from tui.context import AppContext

    async def follow() -> tuple[float, float]:
        start = time.perf_counter()
        app = SdtuiApp(AppContext(runs_dir=run.parent, gpu_spec="1x24GB"), start="dashboard", run=RunDir(run))
        first = full = None
        async with app.run_test(size=(120, 40)) as pilot:
            while full is None and time.perf_counter() - start < 60:
                await pilot.pause(0.01)
                chart = app.screen.query("#loss")
                count = len(chart.first().data[0]) if chart else 0
                if count and first is None:
                    first = time.perf_counter() - start
                if count == points:
                    full = time.perf_counter() - start
        if first is None or full is None:
            raise RuntimeError("the dashboard did not show the full chart within 60 s")
        return first, full

    return asyncio.run(follow())


def make_run(root: Path) -> Path:
    """A finished run folder around a million-line metrics file."""
    import json as _json

    run = root / "runs" / "20261121-000000-long"
    run.mkdir(parents=True)
    (run / "run.toml").write_text('name = "long"\n', encoding="utf-8")
    write_metrics(run / "metrics.jsonl")
    (run / "status.json").write_text(_json.dumps({"state": "finished", "step": LINES, "total_steps": LINES}), encoding="utf-8")
    return run


def main() -> list[str]:
    """Write the file once, time both readers (best of 2) and the dashboard, print the comparison."""
    with tempfile.TemporaryDirectory() as tmp:
        run = make_run(Path(tmp))
        path = run / "metrics.jsonl"
        size_mb = path.stat().st_size / 1e6
        ours = min(sdtui_open(path) for _ in range(2))
        theirs = min(naive_open(path) for _ in range(2))
        thinned, full = screen_open(run, ours[1])
    assert ours[1] == theirs[1], "both readers must find the same points"
    verdict = "under" if ours[0] < TARGET_S else "OVER"
    screen_verdict = "met" if full < TARGET_S else f"missed by {full - TARGET_S:.2f} s"
    return [
        f"metrics open: {LINES:,} lines ({size_mb:.0f} MB): sdtui {ours[0]:.2f} s wall / {ours[2]:.2f} s CPU "
        f"({verdict} the {TARGET_S:.0f} s target), naive json.loads per line {theirs[0]:.2f} s wall / {theirs[2]:.2f} s CPU, "
        f"{ours[1]:,} step points ratio={theirs[0] / ours[0]:.2f}",
        f"metrics_on_screen: dashboard on a {LINES:,}-line run: thinned chart after {thinned:.2f} s, full chart after {full:.2f} s "
        f"(from creating the app, headless 120x40; target {TARGET_S:.0f} s {screen_verdict}) ratio={TARGET_S / full:.2f}",
    ]


if __name__ == "__main__":
    for line in main():
        print(line)
