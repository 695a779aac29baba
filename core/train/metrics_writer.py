"""metrics.jsonl: one JSON object a line, flushed per line, written by rank 0 only."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from core.train.status import now


class MetricsWriter:
    """Appends typed lines (``attempt``, ``step``, ``sample``, ``checkpoint``, ``epoch``, ``event``,
    ``end``) to metrics.jsonl; the file is only ever appended to, never rewritten."""

    def __init__(self, path: str | os.PathLike[str], enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self._handle = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - kept open for the run

    def write(self, kind: str, **fields: Any) -> None:
        """Write one line of type ``kind`` (non-finite floats become null) and flush it. It starts on
        a fresh line whatever the file ends with (a writer killed mid-line, bytes appended by another
        process), so no record is glued to a damaged line and lost with it."""
        if self._handle is None:
            return
        record = {"type": kind, "time": now(), **{k: _finite(v) for k, v in fields.items()}}
        line = json.dumps(record) + "\n"
        self._handle.write(("\n" + line) if _ends_mid_line(self._handle.fileno()) else line)
        self._handle.flush()

    def event(self, message: str, level: str = "info") -> None:
        """A free-text ``event`` line with a level (info, warning, error)."""
        self.write("event", level=level, message=message)

    def end(self, state: str, **fields: Any) -> None:
        """The attempt's last line: its final state (and error, hint, step), for a status rebuilt from the folder."""
        self.write("end", state=state, **{k: v for k, v in fields.items() if v is not None})

    def close(self) -> None:
        """Close the file."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def progress_every(total_steps: int) -> int:
    """Steps between two progress lines: about 20 lines a run, at least every step, at most every 100."""
    return max(1, min(100, total_steps // 20))


class ProgressLog:
    """One compact line per N steps on stdout, so train.log (``sdtui logs -f``) shows the progress
    without the TUI: step, mean loss since the last line, lr, img/s and the ETA at the recent step time."""

    def __init__(self, total_steps: int, enabled: bool = True, stream: Any = None) -> None:
        self.total = total_steps
        self.every = progress_every(total_steps)
        self.enabled = enabled
        self.stream = stream
        self.step_time: float | None = None
        self._losses: list[float] = []

    def step(self, step: int, loss: float, lr: float, images_per_s: float | None, step_time_s: float, step_size: float | None = None) -> None:
        """Take one optimizer step's numbers; print a line every N steps, at the first and the last
        (``step_size``: Prodigy's own d × lr, printed beside the lr)."""
        if not self.enabled:
            return
        self._losses.append(loss)
        if step_time_s > 0:
            self.step_time = step_time_s if self.step_time is None else 0.8 * self.step_time + 0.2 * step_time_s
        if step % self.every and step not in (1, self.total):
            return
        mean = sum(self._losses) / len(self._losses)
        self._losses.clear()
        speed = "–" if images_per_s is None else f"{images_per_s:.2f}"
        eta = format_seconds(max(0, self.total - step) * (self.step_time or 0.0))
        own = "" if step_size is None else f"  step d×lr {step_size:.2e}"
        print(f"[sdtui] step {step}/{self.total}  loss {mean:.4f}  lr {lr:.2e}{own}  {speed} img/s  ETA {eta}", file=self.stream, flush=True)


def format_seconds(seconds: float) -> str:
    """``42s``, ``3m 05s``, ``2h 07m``."""
    whole = int(round(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    return f"{whole // 3600}h {whole % 3600 // 60:02d}m"


def _ends_mid_line(fd: int) -> bool:
    """True when the file open as ``fd`` (readable) is not empty and does not end with a newline."""
    try:
        size = os.fstat(fd).st_size
        return size > 0 and os.pread(fd, 1, size - 1) != b"\n"
    except OSError:
        return False


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def memory_sample(device: Any) -> tuple[int, int]:
    """(allocated, peak) bytes of this process: CUDA allocator counters, or resident memory on the CPU."""
    import torch

    if getattr(device, "type", str(device)) == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.memory_allocated(device)), int(torch.cuda.max_memory_allocated(device))
    import psutil

    info = psutil.Process().memory_info()
    peak = getattr(info, "peak_wset", None) or _peak_rss_linux() or info.rss
    return int(info.rss), int(max(peak, info.rss))


def _peak_rss_linux() -> int | None:
    try:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    except (ImportError, OSError):
        return None


class EventHandler(logging.Handler):
    """Forwards warnings logged by the trainer's modules (e.g. a skipped corrupt image) as ``event`` lines."""

    def __init__(self, writer: MetricsWriter) -> None:
        super().__init__(logging.WARNING)
        self.writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        """Write the record as an event (warning or error)."""
        try:
            self.writer.event(record.getMessage(), "error" if record.levelno >= logging.ERROR else "warning")
        except Exception:  # noqa: BLE001 - logging must never break training
            self.handleError(record)
