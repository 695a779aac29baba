"""The phases before the first optimizer step, with progress and time left, for the user to see.

A run spends minutes before its first step on a big model: starting the process, loading the
weights, generating class images, caching latents and text-encoder outputs. :class:`Phases`
reports each one three ways, so that nobody stares at a silent 'starting':

* ``status.json`` ``phase``: ``{name, label, done, total, unit, elapsed_s, eta_s}`` while the
  phase runs, merge-written at most once a second (the dashboard shows it as a progress bar);
* ``metrics.jsonl`` ``phase`` lines: one when a phase starts, progress at most every
  ``METRICS_EVERY_S``, and one when it ends (with ``elapsed_s``); a ``first_step`` line ends the
  start-up with the seconds since the process started (``since_start_s``);
* ``train.log``: ``caching latents 312/1000, 40 s left, 12 s so far`` on stdout, at most
  every ``LOG_EVERY_S``, and ``caching latents: 1000 done in 52 s``.

Between two items nothing would move, and a model that loads for minutes has no items at all,
so :meth:`Phases.tick` is called by the heartbeat thread every ``HEARTBEAT_S`` seconds: the
running phase's elapsed time (and its time left, which grows while an item takes longer than
the ones before it) reaches status.json and train.log from the same thread and clock that
touch the heartbeat file, which is what the ``stalled`` state reads; so the progress moves
exactly while the run is not taken for stalled.

A stop (control.json or SIGTERM) is checked between phases and between items
(``should_stop``); it ends the start-up with :class:`StartupStopped`, keeping what was written
(cache entries and class images are written one by one, atomically).

Only the main process reports; the other ranks get a disabled reporter (no I/O at all), but
check for a stop as well.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

#: Seconds between status.json / metrics.jsonl / train.log progress updates of a phase.
STATUS_EVERY_S = 1.0
METRICS_EVERY_S = 5.0
LOG_EVERY_S = 5.0

#: Phase name -> what the user reads.
LABELS: dict[str, str] = {
    "process_start": "starting the trainer",
    "load_model": "loading the model",
    "class_images": "generating class images",
    "cache_latents": "caching latents",
    "cache_text": "caching text-encoder outputs",
    "first_step": "first step",
}


def process_age_s() -> float:
    """Seconds since this process started (from the OS), 0 when unknown."""
    try:
        import psutil

        return max(0.0, time.time() - psutil.Process().create_time())
    except Exception:  # noqa: BLE001 - only a figure in the start-up report
        return 0.0


def progress_text(label: str, done: int, total: int, eta_s: float | None, unit: str = "", elapsed_s: float | None = None) -> str:
    """``caching latents 312/1000, 40 s left, 12 s so far`` (the time left once it can be told;
    a phase without a count reads ``loading the model, 12 s so far``)."""
    count = f" {done}/{total}" + (f" {unit}" if unit else "") if total else ""
    left = f", {_seconds(eta_s)} left" if eta_s is not None else ""
    so_far = f", {_seconds(elapsed_s)} so far" if elapsed_s is not None else ""
    return f"{label}{count}{left}{so_far}"


class StartupStopped(Exception):
    """A stop arrived during start-up; the message says where and what was kept."""


def _seconds(value: float) -> str:
    value = max(0.0, value)
    if value < 90:
        return f"{value:.0f} s"
    if value < 5400:
        return f"{value / 60:.0f} min"
    return f"{value / 3600:.1f} h"


class Phases:
    """Reports the start-up phases of one trainer process (see the module docstring)."""

    def __init__(self, status: Any, metrics: Any, enabled: bool = True, clock: Any = time.monotonic, out: Any = None) -> None:
        self.status = status
        self.metrics = metrics
        self.enabled = enabled
        self.clock = clock
        self.out = out
        self.durations: dict[str, float] = {}
        #: True when a stop was asked for (control.json or SIGTERM); checked between phases and items.
        self.should_stop: Callable[[], bool] = lambda: False
        self._lock = threading.Lock()
        self._name = ""
        self._total = 0
        self._unit = ""
        self._started = 0.0
        self._done = 0
        self._done_at = 0.0
        self._status_at = self._metrics_at = self._log_at = -1e9

    def record_process_start(self) -> None:
        """Record the seconds from process start to now (interpreter, imports) as ``process_start``."""
        age = process_age_s()
        self.durations["process_start"] = age
        if self.enabled:
            self.metrics.write("phase", phase="process_start", label=LABELS["process_start"], state="done", elapsed_s=round(age, 3))
            self._print(f"{LABELS['process_start']}: {age:.1f} s")

    def start(self, name: str, total: int = 0, unit: str = "") -> None:
        """A phase begins; ``total`` is its count of work items (0 when it has no count).
        StartupStopped when a stop was asked for before it."""
        self.check_stop()
        with self._lock:
            self._name, self._total, self._unit = name, int(total), unit
            self._started = self._done_at = self.clock()
            self._done = 0
            self._status_at = self._metrics_at = self._log_at = self._started
            if not self.enabled:
                return
            label = LABELS.get(name, name)
            self.status.update(phase=self._record(0, None, self._started))
            self.metrics.write("phase", phase=name, label=label, state="started", done=0, total=self._total, unit=unit)
            self._print(progress_text(label, 0, self._total, None, unit) if self._total else f"{label} …")

    def advance(self, done: int) -> None:
        """``done`` of the phase's items are finished (reports when an update is due); then
        StartupStopped when a stop was asked for."""
        with self._lock:
            if self._name:
                now = self.clock()
                if done != self._done:
                    self._done, self._done_at = done, now
                if self.enabled:
                    self._report(now, metrics=True)
        self.check_stop()

    def tick(self) -> None:
        """The heartbeat thread's call every few seconds: the running phase's elapsed time and time
        left in status.json and, every LOG_EVERY_S, train.log (nothing between phases)."""
        with self._lock:
            if self.enabled and self._name:
                self._report(self.clock(), metrics=False)

    def check_stop(self) -> None:
        """Raise StartupStopped when a stop was asked for, naming the phase and what it kept."""
        if not self.should_stop():
            return
        where = f"while {LABELS.get(self._name, self._name)}" if self._name else "between its phases"
        count = f" ({self._done}/{self._total} {self._unit or 'done'} kept)" if self._name and self._total else ""
        raise StartupStopped(f"stopped during start-up {where}{count}; what was generated or cached so far stays and the next start reuses it")

    def _eta(self, now: float) -> float | None:
        """Seconds left: the mean item time so far for the items left, less what the current item has
        run; an item that runs longer than the mean holds the time left at the items after it."""
        if self._done <= 0 or not self._total:
            return None
        per_item = (self._done_at - self._started) / self._done
        left = self._total - self._done
        running = now - self._done_at
        return max(per_item * left - running, per_item * (left - 1), 0.0)

    def _report(self, now: float, metrics: bool) -> None:
        """Write what is due: status.json every STATUS_EVERY_S, metrics.jsonl every METRICS_EVERY_S (from
        ``advance`` only), train.log every LOG_EVERY_S."""
        elapsed, eta, label = now - self._started, self._eta(now), LABELS.get(self._name, self._name)
        if now - self._status_at >= STATUS_EVERY_S:
            self._status_at = now
            self.status.update(phase=self._record(self._done, eta, now))
        if metrics and now - self._metrics_at >= METRICS_EVERY_S:
            self._metrics_at = now
            self.metrics.write("phase", phase=self._name, label=label, state="running", done=self._done, total=self._total, unit=self._unit, elapsed_s=round(elapsed, 3), eta_s=_round(eta))
        if now - self._log_at >= LOG_EVERY_S:
            self._log_at = now
            self._print(progress_text(label, self._done, self._total, eta, self._unit, elapsed))

    def end(self, done: int | None = None, note: str = "", **fields: Any) -> float:
        """The phase is over; return its seconds. ``note`` adds to the closing line, ``fields`` to its metrics line."""
        with self._lock:
            return self._end(done, note, fields)

    def _end(self, done: int | None, note: str, fields: dict[str, Any]) -> float:
        name = self._name
        if not name:
            return 0.0
        elapsed = self.clock() - self._started
        self.durations[name] = self.durations.get(name, 0.0) + elapsed
        self._name = ""
        if self.enabled:
            label = LABELS.get(name, name)
            count = self._total if done is None else done
            self.status.update(phase=None)
            self.metrics.write("phase", phase=name, label=label, state="done", done=count, total=self._total, unit=self._unit, elapsed_s=round(elapsed, 3), note=note or None, **fields)
            what = f"{count} {self._unit or 'done'}" if self._total else "done"
            self._print(f"{label}: {what} in {_seconds(elapsed)}" + (f" ({note})" if note else ""))
        return elapsed

    def first_step(self) -> None:
        """The first optimizer step is done: the start-up summary (each phase's seconds, the total)."""
        if not self.enabled:
            return
        since = process_age_s()
        phases = {k: round(v, 3) for k, v in self.durations.items()}
        self.metrics.write("phase", phase="first_step", label=LABELS["first_step"], state="done", since_start_s=round(since, 3), phases=phases)
        parts = ", ".join(f"{LABELS.get(k, k)} {v:.1f} s" for k, v in phases.items())
        self._print(f"first step {since:.1f} s after the process started ({parts})")

    def _record(self, done: int, eta: float | None, now: float) -> dict[str, Any]:
        return {
            "name": self._name,
            "label": LABELS.get(self._name, self._name),
            "done": done,
            "total": self._total,
            "unit": self._unit,
            "elapsed_s": round(now - self._started, 1),
            "eta_s": _round(eta),
            "item_s": round(now - self._done_at, 1),
        }

    def _print(self, text: str) -> None:
        import sys

        print(f"sdtui-train: {text}", file=self.out or sys.stdout, flush=True)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
