"""What the dashboard knows about one run, fed from metrics.jsonl records. No Textual here."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

SMOOTHING = 0.9
ETA_WINDOW = 20


@dataclass(frozen=True)
class Sample:
    """One sample image the trainer wrote."""

    step: int
    prompt_index: int
    prompt: str
    path: str


@dataclass
class RunView:
    """The series and the latest values the dashboard draws; ``feed`` it new metrics records."""

    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    lr_steps: list[int] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    images_per_s: float | None = None
    epoch: float | None = None
    rank_memory: dict[int, tuple[int, int]] = field(default_factory=dict)
    samples: dict[int, list[Sample]] = field(default_factory=dict)
    newest_sample: Sample | None = None
    events: list[str] = field(default_factory=list)
    _step_times: deque = field(default_factory=lambda: deque(maxlen=ETA_WINDOW))

    def feed(self, records: list[dict[str, Any]]) -> bool:
        """Take new records; True when anything the dashboard shows changed."""
        changed = False
        for record in records:
            kind = record.get("type")
            if kind == "step":
                self._step(record)
            elif kind == "sample":
                self._sample(record)
            elif kind == "event":
                self.events.append(f"{record.get('level', 'info')}: {record.get('message', '')}")
            elif kind == "epoch" and record.get("epoch") is not None:
                self.epoch = record["epoch"]
            else:
                continue
            changed = True
        return changed

    def _step(self, record: dict[str, Any]) -> None:
        step = int(record.get("step") or 0)
        loss = record.get("loss")
        if isinstance(loss, (int, float)) and math.isfinite(loss):
            previous = self.smoothed[-1] if self.smoothed else loss
            self.steps.append(step)
            self.losses.append(float(loss))
            self.smoothed.append(SMOOTHING * previous + (1 - SMOOTHING) * loss if self.smoothed else float(loss))
        if isinstance(record.get("lr"), (int, float)):
            self.lr_steps.append(step)
            self.lrs.append(float(record["lr"]))
        if isinstance(record.get("images_per_s"), (int, float)):
            self.images_per_s = float(record["images_per_s"])
        if isinstance(record.get("step_time_s"), (int, float)):
            self._step_times.append(float(record["step_time_s"]))
        if record.get("epoch") is not None:
            self.epoch = record["epoch"]
        self.rank_memory.update(rank_memory(record.get("mem")))

    def _sample(self, record: dict[str, Any]) -> None:
        sample = Sample(int(record.get("step") or 0), int(record.get("prompt_index") or 0), str(record.get("prompt") or ""), str(record.get("path") or ""))
        self.samples.setdefault(sample.prompt_index, []).append(sample)
        self.newest_sample = sample

    @property
    def step(self) -> int:
        """The newest optimizer step seen."""
        return max(self.steps[-1] if self.steps else 0, self.lr_steps[-1] if self.lr_steps else 0)

    def eta_s(self, total_steps: int | None) -> float | None:
        """Seconds left at the recent step time (None until there is one)."""
        if not total_steps or not self._step_times:
            return None
        return max(0, total_steps - self.step) * sum(self._step_times) / len(self._step_times)


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
