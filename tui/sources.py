"""What the screens show, read from core: GPU rows, run rows, run progress. No Textual here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tui.format import GIB



@dataclass(frozen=True)
class GpuRow:
    """One GPU as the home screen and the dashboard show it."""

    index: int
    name: str
    used_bytes: int | None
    total_bytes: int
    bf16: bool
    driver: str
    utilization: int | None
    simulated: bool

    @property
    def fraction(self) -> float:
        return (self.used_bytes or 0) / self.total_bytes if self.total_bytes else 0.0


def gpu_rows(gpus: Any) -> list[GpuRow]:
    """Rows for a core.gpu.GpuSet."""
    rows = []
    for g in gpus.gpus:
        total = int(g.vram_total_bytes or 0)
        free = g.vram_free_bytes
        used = None if free is None or g.simulated else total - int(free)
        rows.append(GpuRow(g.index, g.name, used, total, bool(g.bf16), g.driver or "", g.utilization, bool(g.simulated)))
    return rows


def no_gpu_sentence(gpus: Any) -> str | None:
    """A plain sentence when there is no usable GPU, else None."""
    if gpus.gpus:
        return None
    reason = gpus.reason or "no NVIDIA GPU was found"
    return (
        f"No GPU here: {reason}. Press d for the CPU demo, or plan for hardware you are about to rent: "
        "sdtui --gpus 1x24GB"
    )


@dataclass(frozen=True)
class RunRow:
    """One run as the home screen lists it."""

    run_id: str
    path: Path
    state: str
    step: int | None
    total_steps: int | None
    loss: float | None
    updated_at: float | None

    def age(self, now: float) -> float | None:
        return None if self.updated_at is None else max(0.0, now - self.updated_at)


def total_steps(run: Any, status: dict[str, Any]) -> int | None:
    """The run's total optimizer steps: status.json's ``total_steps``, else plan.json's row for the GPUs used."""
    if status.get("total_steps"):
        return int(status["total_steps"])
    from core.atomic import read_json

    plan = read_json(run.plan_json, None)
    if not isinstance(plan, dict):
        return None
    count = (plan.get("gpu") or {}).get("count") or 1
    for row in plan.get("schedule") or []:
        if row.get("gpus") == count:
            return int(row.get("total_steps") or 0) or None
    return None


def updated_at(status: dict[str, Any]) -> float | None:
    """status.json's ``updated_at`` as seconds since the epoch."""
    value = status.get("updated_at")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        from datetime import datetime

        try:
            return datetime.fromisoformat(value).timestamp()
        except ValueError:
            return None
    return None


class RunsWatcher:
    """The runs of a folder with their live state and last loss (read from the end of metrics.jsonl only)."""

    def __init__(self, runs_dir: Path) -> None:
        self.runs_dir = Path(runs_dir)

    def rows(self) -> list[RunRow]:
        """Every run, newest first (by creation, so a live run does not jump around)."""
        from core.runs import list_runs

        rows = []
        for run in list_runs(self.runs_dir):
            status = run.read_status()
            last = run.last_step_record() or {}
            steps = [int(v) for v in (status.get("step"), last.get("step")) if isinstance(v, (int, float))]
            step = max(steps) if steps else None
            rows.append(RunRow(run.id, run.path, run.derive_state(status), step, total_steps(run, status), last.get("loss"), updated_at(status)))
        return rows


def vram_text(row: GpuRow) -> str:
    """``3.2/24.0 GiB`` or ``24.0 GiB`` when the use is unknown."""
    total = row.total_bytes / GIB
    if row.used_bytes is None:
        return f"{total:.1f} GiB"
    return f"{row.used_bytes / GIB:.1f}/{total:.1f} GiB"
