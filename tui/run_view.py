"""What the dashboard knows about one run, fed from metrics.jsonl by offset. No Textual here."""

from __future__ import annotations

import gc
import math
from typing import Any

import numpy as np

from core.monitor.samples import Sample

#: The smoothed loss is a trailing moving average over this share of the run (at least MIN_WINDOW steps).
WINDOW_SHARE = 0.02
MIN_WINDOW = 10


class RunView:
    """The series (core.monitor.MetricsSeries), the smoothed loss and the latest values the dashboard draws."""

    def __init__(self) -> None:
        from core.monitor import MetricsSeries

        self.series = MetricsSeries()
        self.smoothed = np.zeros(0)
        self.samples: dict[int, list[Sample]] = {}
        self.newest_sample: Sample | None = None
        self.step_time_s: float | None = None
        self._samples_seen = 0
        self._last_event: dict[str, Any] | None = None
        self._last_fed: dict[str, Any] | None = None
        self._rollbacks = 0
        self.previewing = False

    def preview(self, path: Any) -> bool:
        """Sample a long metrics file for a thinned chart at once (True when it did); the next update reads it all."""
        from core.monitor import MetricsSeries
        from core.monitor.preview import sampled_steps

        lines = sampled_steps(path)
        if not lines:
            return False
        series = MetricsSeries()
        series.add(lines)
        self.series = series
        self.smoothed = moving_average(np.frombuffer(series.loss, dtype=np.float64))
        self.previewing = True
        return True

    def update(self, tail: Any) -> bool:
        """Read what is new from a MetricsTail; True when anything changed."""
        if self.previewing:
            from core.monitor import MetricsSeries

            self.series = MetricsSeries()  # the full read replaces the sampled lines
            self.previewing = False
        collecting = gc.isenabled()
        gc.disable()  # a first read of a long run allocates millions of acyclic dicts: GC passes would double its time
        try:
            added = self.series.update(tail)
        finally:
            if collecting:
                gc.enable()
        if tail.reset or self.series.rollbacks != self._rollbacks:
            self.samples, self.newest_sample, self._samples_seen = {}, None, 0
            self._rollbacks = self.series.rollbacks
        if not added and not tail.reset:
            return False
        self.smoothed = moving_average(np.frombuffer(self.series.loss, dtype=np.float64))
        self._take_samples()
        if self._resumed():
            self.step_time_s = None  # the rate window starts again from the first step after a pause
        last = self.series.last_step or {}
        fed, self._last_fed = self._last_fed, last
        step_time = last.get("step_time_s") if last is not fed else None
        if isinstance(step_time, (int, float)) and step_time > 0:
            previous = self.step_time_s
            self.step_time_s = step_time if previous is None else 0.7 * previous + 0.3 * step_time
        return True

    def _resumed(self) -> bool:
        """Whether an event line since the last update says the run resumed from a pause."""
        events = self.series.events
        new: list[dict[str, Any]] = []
        for event in reversed(events):
            if event is self._last_event:
                break
            new.append(event)
        self._last_event = events[-1] if events else None
        return any(str(e.get("message", "")).startswith("resumed at step") for e in new)

    def _take_samples(self) -> None:
        for record in self.series.samples[self._samples_seen :]:
            sample = Sample.from_record(record)
            self.samples.setdefault(sample.prompt_index, []).append(sample)
            self.newest_sample = sample
        self._samples_seen = len(self.series.samples)

    @property
    def step(self) -> int:
        """The newest optimizer step seen."""
        last = self.series.last_step
        return int(last.get("step") or 0) if last else 0

    def last(self, key: str) -> Any:
        """A value of the newest step record (None when there is none)."""
        return (self.series.last_step or {}).get(key)

    @property
    def loss(self) -> float | None:
        """The newest smoothed loss (the mean of the last :attr:`window` steps)."""
        return float(self.smoothed[-1]) if len(self.smoothed) and math.isfinite(self.smoothed[-1]) else None

    @property
    def raw_loss(self) -> float | None:
        """The newest step's own loss: what home, ``sdtui runs`` and ``sdtui status`` show."""
        value = self.last("loss")
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None

    @property
    def window(self) -> int:
        """Steps the smoothed loss averages over now."""
        return smoothing_window(len(self.series.loss))

    def eta_s(self, total_steps: int | None, state: str = "running") -> float | None:
        """Seconds left at the recent step time (None until there is one, and while paused:
        paused time is not training time)."""
        if not total_steps or self.step_time_s is None or state == "paused":
            return None
        return max(0, total_steps - self.step) * self.step_time_s

    def rank_memory(self) -> dict[int, tuple[int, int]]:
        """``{rank: (allocated, peak)}`` bytes from the newest step record."""
        return rank_memory(self.last("mem"))


def moving_average(values: np.ndarray) -> np.ndarray:
    """Trailing mean over a window of 2% of the series (NaNs skipped); O(n) with cumulative sums."""
    n = len(values)
    if n == 0:
        return np.zeros(0)
    window = smoothing_window(n)
    finite = np.isfinite(values)
    sums = np.concatenate(([0.0], np.cumsum(np.where(finite, values, 0.0))))
    counts = np.concatenate(([0], np.cumsum(finite)))
    end = np.arange(1, n + 1)
    start = np.maximum(end - window, 0)
    count = counts[end] - counts[start]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, (sums[end] - sums[start]) / np.maximum(count, 1), np.nan)


def smoothing_window(n: int) -> int:
    """The moving average's window over a series of ``n`` steps: 2 % of it, at least 10 steps."""
    return min(n, max(MIN_WINDOW, int(n * WINDOW_SHARE)))


def rank_memory(mem: Any) -> dict[int, tuple[int, int]]:
    """``{rank: (allocated, peak)}`` from a step record's ``mem`` (a list per rank or a dict by rank)."""
    out: dict[int, tuple[int, int]] = {}
    if isinstance(mem, dict) and ("allocated" in mem or "peak" in mem):
        mem = [mem]
    items = mem.items() if isinstance(mem, dict) else enumerate(mem or [])
    for key, value in items:
        if isinstance(value, dict):
            rank = int(value.get("rank", key))
            out[rank] = (int(value.get("allocated") or 0), int(value.get("peak") or 0))
        elif isinstance(value, (list, tuple)) and len(value) == 2:
            out[int(key)] = (int(value[0]), int(value[1]))
    return out
