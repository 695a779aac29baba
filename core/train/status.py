"""status.json from the trainer's side: merge-writes and the failure sentences with hints."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from core.folder_watch import again_if_moved
from core.runs.rundir import RunDir


def now() -> float:
    """The time stamp written into status.json and metrics (seconds since the epoch)."""
    return round(time.time(), 3)


class StatusFile:
    """Merge-writes the run's ``status.json`` (under core.runs.rundir' lock); only the main process writes."""

    def __init__(self, run_dir: str | os.PathLike[str], enabled: bool = True) -> None:
        self.run = RunDir(run_dir)
        self.enabled = enabled
        #: Follows a move of the run folder (True when it was moved), so a write the move cut short
        #: is done again at the new path; None lets the write fail.
        self.follow: Callable[[], bool] | None = None

    def read(self) -> dict[str, Any]:
        """The current contents ({} when missing or half-written)."""
        return self.run.read_status()

    def update(self, **fields: Any) -> None:
        """Merge ``fields`` into status.json, keeping what the supervisor wrote (None removes a key)."""
        if self.enabled:
            again_if_moved(lambda: self.run.write_status(**fields), self.follow)


#: Seconds between heartbeats while the trainer is busy with something that is not a step.
HEARTBEAT_S = 2.0


class Heartbeat:
    """Touches the run's ``heartbeat`` file while the trainer is busy between steps (loading,
    saving, sampling), so a long save is not taken for a stall; a stopped or hung process stops it."""

    def __init__(self, path: str | os.PathLike[str], enabled: bool = True, tick: Callable[[], None] | None = None) -> None:
        self.path = Path(path)
        self.enabled = enabled
        #: Called after each beat (the start-up phases' progress rides on the heartbeat's clock).
        self.tick = tick
        self._depth = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        """One heartbeat now."""
        if not self.enabled:
            return
        try:
            with open(self.path, "a"):
                pass
            os.utime(self.path)
        except OSError:
            pass  # a full or read-only disk: the stall check then only sees the steps

    @contextmanager
    def busy(self) -> Iterator[None]:
        """Beat every HEARTBEAT_S seconds inside the block (nested blocks share one thread)."""
        self._depth += 1
        if self._depth == 1 and self.enabled:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="sdtui-heartbeat", daemon=True)
            self._thread.start()
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0 and self._thread is not None:
                self._stop.set()
                self._thread.join()
                self._thread = None
                self.beat()

    def _run(self) -> None:
        while True:
            self.beat()
            if self.tick is not None:
                try:
                    self.tick()
                except Exception as exc:  # noqa: BLE001 - a progress report must never end the heartbeat
                    print(f"sdtui-train: the start-up progress report failed ({type(exc).__name__}: {first_line(exc)})", file=sys.stderr)
            if self._stop.wait(HEARTBEAT_S):
                return


class NotOwner(Exception):
    """The run folder belongs to another trainer or attempt: this process must not write into it."""


def oom_hint(family: str | None, method: str, settings: dict[str, Any], step: int, shape: Any = None) -> str:
    """What to change after running out of memory at ``step``: a fitting recipe when the picker
    knows one (the model's ``family`` is known), judged for the run's ``shape``
    (core.plan.fit.RunShape) as the planner judges."""
    try:
        if family is None:
            raise LookupError("no model loaded yet")
        from core.gpu import probe
        from core.plan.fit import RunShape
        from core.plan.picker import pick_recipes
        from core.recipes import load_recipes

        fits = [f for f in pick_recipes(family, method, probe(), load_recipes(), shape=shape or RunShape()) if f.name != settings.get("recipe") or f.changes]
        if fits:
            leanest = min(fits, key=lambda f: f.estimate.total_bytes)
            sets = "".join(f" --set {k}={str(v).lower()}" for k, v in leanest.changes.items())
            return f"out of memory at step {step}: restart with the recipe '{leanest.name}'{sets} (estimated {leanest.estimate.gb:.1f} GiB, which fits this GPU)"
    except Exception:  # noqa: BLE001 - the picker is advice only; fall back to generic advice
        pass
    advice = []
    if not settings.get("gradient_checkpointing"):
        advice.append("settings.gradient_checkpointing=true")
    if settings.get("optimizer") not in ("adamw8bit", "lion8bit", "adafactor"):
        advice.append("settings.optimizer=adamw8bit")
    if settings.get("batch_size", 1) > 1:
        advice.append("settings.batch_size=1")
    if not settings.get("cache_latents"):
        advice.append("settings.cache_latents=true")
    advice.append(f"settings.resolution={max(256, int(settings.get('resolution', 512)) * 3 // 4 // 64 * 64)}")
    return f"out of memory at step {step}: retry with --set " + " --set ".join(advice)


def nan_hint(settings: dict[str, Any], learning_rate: float) -> str:
    """What to change after the loss became NaN or infinite."""
    if settings.get("mixed_precision") == "fp16":
        return f"switch settings.mixed_precision from fp16 to bf16 (if the GPU supports it) or lower schedule.learning_rate below {learning_rate:g}"
    return f"lower schedule.learning_rate (now {learning_rate:g}), e.g. by 10x, or set settings.max_grad_norm=1"


class TrainingFailed(Exception):
    """The run failed for a reason with a known fix: ``error`` and ``hint`` go into status.json."""

    def __init__(self, error: str, hint: str) -> None:
        super().__init__(error)
        self.error = error
        self.hint = hint


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (at most 200 characters), else its type name."""
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
