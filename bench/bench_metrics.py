"""Opening a 1,000,000-line metrics.jsonl: sdtui's first poll + series against naive JSON loading.

sdtui: ``MetricsSeries().update(MetricsTail(path))`` — the dashboard's first look at a long run
(read in chunks, one ``json.loads`` per chunk, series into flat arrays).
Naive: ``[json.loads(line) for line in open(path)]`` then the same series built from the dicts.
ratio = naive / sdtui (> 1: sdtui is faster). The target is under 2 s for sdtui.
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
                    "type": "step", "time": 1763740000.0 + step * 0.5, "step": step, "epoch": step // 400,
                    "loss": 0.1 + (step % 97) / 1000, "lr": 1e-4, "images_per_s": 3.21, "step_time_s": 0.311,
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


def main() -> list[str]:
    """Write the file once, time both readers (best of 2), print the comparison."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "metrics.jsonl"
        write_metrics(path)
        size_mb = path.stat().st_size / 1e6
        ours = min(sdtui_open(path) for _ in range(2))
        theirs = min(naive_open(path) for _ in range(2))
    assert ours[1] == theirs[1], "both readers must find the same points"
    verdict = "under" if ours[0] < TARGET_S else "OVER"
    return [
        f"metrics open: {LINES:,} lines ({size_mb:.0f} MB): sdtui {ours[0]:.2f} s wall / {ours[2]:.2f} s CPU "
        f"({verdict} the {TARGET_S:.0f} s target), naive json.loads per line {theirs[0]:.2f} s wall / {theirs[2]:.2f} s CPU, "
        f"{ours[1]:,} step points ratio={theirs[0] / ours[0]:.2f}"
    ]


if __name__ == "__main__":
    for line in main():
        print(line)
