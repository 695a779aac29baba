"""What the screens show, read from core: GPU rows, run rows, run progress. No Textual here."""

from __future__ import annotations

from dataclasses import dataclass, replace
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
    return f"No GPU here: {reason}. Press d for the CPU demo, or plan for hardware you are about to rent: sdtui --gpus 1x24GB"


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
    from core.runs.readers import integer, plan_total

    return integer(status.get("total_steps")) or plan_total(run.plan_json) or None


class RunsWatcher:
    """The runs of a folder with their live state and last loss, re-read only where a file changed.

    A refresh stats status.json and metrics.jsonl of each live run; a run whose files are
    unchanged keeps its row, a changed one is read again (status.json, the end of
    metrics.jsonl), and live runs get their state derived each time (their processes may have
    died without a word). The folder is listed again when its modification time changes (a run
    was added or removed), and runs in a final state are looked at every ``FULL_EVERY``-th
    refresh only (a resumed run shows within that): 500 finished runs cost one stat a refresh.
    """

    FULL_EVERY = 8

    def __init__(self, runs_dir: Path) -> None:
        self.runs_dir = Path(runs_dir)
        self._known: dict[Path, tuple[tuple[int, ...], dict[str, Any], RunRow]] = {}
        self._listing: tuple[tuple[int, ...], list[Path]] = ((), [])
        self._refreshes = 0

    def _children(self, root: Path) -> list[Path]:
        """The run folders of ``root``, listed again only when the folder changed."""
        from core.runs.listing import is_run_dir

        stamp = _stamp(root)
        if stamp != self._listing[0]:
            self._listing = (stamp, [c for c in root.iterdir() if not c.name.startswith(".") and is_run_dir(c)])
        return self._listing[1]

    def rows(self) -> list[RunRow]:
        """Every run, newest first (by creation, so a live run does not jump around)."""
        from core.runs.readers import number
        from core.runs.rundir import RunDir
        from core.runs.states import FINAL_STATES

        root = self.runs_dir.expanduser()
        if not root.is_dir():
            return []
        full = self._refreshes % self.FULL_EVERY == 0
        self._refreshes += 1
        found: dict[Path, tuple[tuple[int, ...], dict[str, Any], RunRow]] = {}
        for child in self._children(root):
            known = self._known.get(child)
            if known is not None and not full and known[2].state in FINAL_STATES:
                found[child] = known
                continue
            run = RunDir(child)
            key = _stamp(run.status_json) + _stamp(run.metrics)
            known = self._known.get(child)
            if known is not None and known[0] == key:
                status, row = known[1], known[2]
                if row.state not in FINAL_STATES:
                    row = replace(row, state=run.derive_state(status))
            else:
                status = run.read_status()
                summary = run.summary()  # any bytes in the run's files: the state rebuilt, never an error
                row = RunRow(run.id, run.path, summary["state"], summary["step"], summary["total_steps"] or total_steps(run, status), summary["loss"], summary["updated_at"])
            found[child] = (key, status, row)
        self._known = found
        ordered = sorted(found.values(), key=lambda v: (number(v[1].get("created_at")) or _created(v[2].path), v[2].run_id), reverse=True)
        return [row for _, _, row in ordered]


def _stamp(path: Path) -> tuple[int, ...]:
    """(mtime ns, size) of a file, (0, -1) when it is missing."""
    try:
        stat = path.stat()
    except OSError:
        return (0, -1)
    return (stat.st_mtime_ns, stat.st_size)


def _created(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def vram_text(row: GpuRow) -> str:
    """``3.2/24.0 GiB`` or ``24.0 GiB`` when the use is unknown."""
    total = row.total_bytes / GIB
    if row.used_bytes is None:
        return f"{total:.1f} GiB"
    return f"{row.used_bytes / GIB:.1f}/{total:.1f} GiB"
