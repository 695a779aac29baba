"""The training loop: ``python -m core.train RUN_DIR`` reads run.toml and trains with accelerate.

One optimizer step is ``accumulation`` micro-batches of this rank's share of the epoch
(``core.plan.schedule`` decides which batches and when a step is due, so the planner's step
count is the trainer's). Gradient accumulation is driven here (``no_sync`` on the micro-batches
that do not end a step, the loss divided by the micro-batches of the step) rather than by
accelerate's counter, which would not end a step at an epoch's short end. The LR schedule is
stepped once per optimizer step by this loop, never through accelerate's prepared scheduler
(which steps ``num_processes`` times per call).

The ``Trainer`` is put together from: ``startup.Startup`` (set-up and resume), ``step.Stepping``
(loss, backward, optimizer step), ``saving.Saving`` (checkpoints, outputs, samples) and
``control.ControlHandling`` (control.json requests); this module holds the epoch iteration,
the step lines and the process entry point.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import time
import traceback
from typing import Any

from core.errors import UserError
from core.plan import schedule
from core.runs import RunDir

from . import trackers
from .control import ControlHandling
from .disk import DiskFull, Reserve
from .metrics import EventHandler, MetricsWriter, ProgressLog, memory_sample
from .phases import Phases
from .saving import Saving
from .startup import Startup
from .status import Heartbeat, NotOwner, StatusFile, TrainingFailed, first_line, nan_hint, now, oom_hint
from .step import Stepping

#: How often (in optimizer steps) the loss is read back from a GPU; on the CPU every step.
GPU_LOG_EVERY = 10
#: Seconds between status.json step updates (each is an fsynced atomic write).
STATUS_EVERY_S = 2.0


class Trainer(Startup, Stepping, Saving, ControlHandling):
    """One training run in one process (rank) of ``accelerate launch``."""

    def __init__(self, run_dir: str | os.PathLike[str], attempt: str = "") -> None:
        self.run = RunDir(run_dir)
        self.attempt = attempt
        self.started = False
        self.folder_lock: Any = None
        self.reserve = Reserve(self.run.path / ".reserve")
        self.heartbeat = Heartbeat(self.run.heartbeat, enabled=False)
        self.step = 0
        self.epoch = 0  # epochs completed (the index of the one in progress)
        self.epoch_number = 1  # the 1-based epoch of the newest step, as metrics, status and the dashboard show it
        self.batch_index = 0
        self.total_steps = 0
        self.stop_signal = False
        self._status_at = 0.0
        self.acc: Any = None
        self.metrics = MetricsWriter(self.run.metrics, enabled=False)
        self.progress = ProgressLog(0, enabled=False)
        self.status = StatusFile(self.run.path, enabled=False)
        self.phases = Phases(self.status, self.metrics, enabled=False)

    def train(self) -> str:
        """Run to the end (or a stop); return the final state."""
        self.epoch_number = self.epoch + 1
        self.status.update(state="running", step=self.step, total_steps=self.total_steps, epoch=self.epoch_number, steps_per_epoch=self.steps_per_epoch)
        if self.step == 0:
            self.metrics.event(
                f"training {self.method_kind} on {self.family}: {self.total_steps} steps, {self.steps_per_epoch} per epoch, "
                f"{self.world} process(es), {self.data.train_data.items_per_epoch} items per epoch, precision {self.precision}"
            )
            if self.sched["sample_at_start"]:
                self.sample()
        accumulation = int(self.sched["gradient_accumulation"])
        pending: list[tuple[int, int, Any, float, float, int]] = []
        self.log_every = GPU_LOG_EVERY if self.device.type == "cuda" else 1
        first_step = True
        while self.step < self.total_steps:
            epoch = self.epoch
            batches = self.data.for_epoch(epoch)
            count = len(batches)
            step_start, images, loss_sum = time.perf_counter(), 0, None
            for index, batch, weight in self.data.iterate(epoch, batches, self.batch_index):
                group_start = index - (index % accumulation)
                group_size = min(accumulation, count - group_start)
                due = schedule.optimizer_step_due(index, count, accumulation)
                loss = self.micro_step(batch, index, due, group_size, weight)
                loss_sum = loss / group_size if loss_sum is None else loss_sum + loss / group_size
                images += len(batch["captions"])
                if not due:
                    continue
                lr = self._current_lr()
                self._optimizer_step()
                self.step += 1
                if first_step:
                    first_step = False
                    self.phases.first_step()
                epoch_done = index + 1 >= count
                self.epoch, self.batch_index = (epoch + 1, 0) if epoch_done else (epoch, index + 1)
                elapsed = time.perf_counter() - step_start
                pending.append((self.step, epoch, self.acc.reduce(loss_sum, "mean"), lr, elapsed, images * self.world))
                self.epoch_number = epoch + 1
                images, loss_sum = 0, None
                if len(pending) >= self.log_every or self.step == self.total_steps:
                    self._flush(pending)
                final = self._after_step(epoch_done, pending)
                if final:
                    return final
                if self.step >= self.total_steps:
                    break
                # saves, samples and a pause are not part of the next step's time (nor of the ETA)
                step_start = time.perf_counter()
            if self.epoch == epoch and self.step < self.total_steps:  # nothing left of this epoch on this rank
                self.epoch, self.batch_index = epoch + 1, 0
        self._flush(pending)
        self.save(final=True)
        self.status.update(state="finished", step=self.step, epoch=self.epoch_number, ended_at=now())
        self.metrics.event("training finished")
        self.metrics.end("finished", step=self.step)
        return "finished"

    def _after_step(self, epoch_done: bool, pending: list) -> str | None:
        """Epoch bookkeeping, periodic saves and samples, control requests; a final state ends the run."""
        sched = self.sched
        epoch_number = self.epoch  # epochs completed so far (1-based number of the one just ended)
        if epoch_done:
            self._flush(pending)
            self.metrics.write("epoch", epoch=epoch_number, step=self.step)
        last = self.step >= self.total_steps
        save_due = (sched["save_every_steps"] and self.step % sched["save_every_steps"] == 0) or (
            epoch_done and sched["save_every_epochs"] and epoch_number % sched["save_every_epochs"] == 0
        )
        if save_due and not last:
            self._flush(pending)
            self.save()
        sample_due = (sched["sample_every_steps"] and self.step % sched["sample_every_steps"] == 0) or (
            epoch_done and sched["sample_every_epochs"] and epoch_number % sched["sample_every_epochs"] == 0
        )
        if sample_due:
            self._flush(pending)
            self.sample()
        if last:
            return None
        if epoch_done or time.monotonic() - self._status_at >= STATUS_EVERY_S:
            self.status.update(step=self.step, epoch=self.epoch_number)
            self._status_at = time.monotonic()
        if epoch_done or self.step % self.log_every == 0:  # every rank polls at the same steps
            return self._handle_control(pending)
        return None

    def _flush(self, pending: list) -> None:
        """Write the buffered step lines (one host sync for the lot) with every rank's memory."""
        if not pending:
            return
        import torch

        losses = torch.stack([p[2] for p in pending]).float().cpu().tolist()
        mem = self._memory()
        for (step, epoch, _, lr, elapsed, images), loss in zip(pending, losses):
            if not math.isfinite(loss):
                raise TrainingFailed(f"the loss became {loss} (not finite) at step {step}", nan_hint(self.settings, float(self.sched["learning_rate"])))
            speed = round(images / elapsed, 4) if elapsed > 0 else None
            self.metrics.write("step", step=step, epoch=epoch + 1, loss=loss, lr=lr, images_per_s=speed, step_time_s=round(elapsed, 5), mem=mem)
            trackers.log_step(self.acc, step, {"loss": loss, "lr": lr, "images_per_s": speed})
            self.progress.step(step, loss, lr, speed, elapsed)
        pending.clear()

    def _memory(self) -> list[dict[str, int]]:
        import torch

        allocated, peak = memory_sample(self.device)
        mine = torch.tensor([allocated, peak], dtype=torch.int64, device=self.device)
        everyone = self.acc.gather(mine.unsqueeze(0)).cpu().tolist() if self.world > 1 else [mine.tolist()]
        return [{"rank": r, "allocated": a, "peak": p} for r, (a, p) in enumerate(everyone)]


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def main(run_dir: str, attempt: str = "") -> int:
    """Train the run in ``run_dir``; record the final state; 0 finished or stopped, 1 failed, 3 not
    this trainer's folder (another trainer or attempt owns it: nothing is written)."""
    trainer = Trainer(run_dir, attempt)

    def on_term(signum: int, _frame: Any) -> None:
        trainer.stop_signal = True

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        trainer.setup()
        state = trainer.train()
    except NotOwner as exc:
        print(f"sdtui-train: {exc}", file=sys.stderr)
        return 3
    except Exception as exc:  # noqa: BLE001 - every failure is recorded with its sentence
        if isinstance(exc, DiskFull):
            trainer.reserve.release()
        error, hint = _describe_failure(trainer, exc)
        if not isinstance(exc, (UserError, TrainingFailed)):
            traceback.print_exc()
        print(f"sdtui-train: {error}" + (f" ({hint})" if hint else ""), file=sys.stderr)
        if trainer.acc is None or trainer.acc.is_main_process:
            _record_failure(trainer, error, hint)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
        logger = logging.getLogger("core.train")
        for handler in [h for h in logger.handlers if isinstance(h, EventHandler)]:
            logger.removeHandler(handler)
        trainer.metrics.close()
        if trainer.acc is not None and trainer.acc.log_with:
            trainer.acc.end_training()
        trainer.reserve.release()
        if trainer.folder_lock is not None:
            trainer.folder_lock.close()
        _end_process_group()
    return 0 if state in ("finished", "stopped") else 1


def _record_failure(trainer: Trainer, error: str, hint: str) -> None:
    """status.json ``failed`` (the step only once training started: a failed resume keeps the
    recorded step) and the metrics' last lines; a write that fails here (a full disk) is reported."""
    fields = {"step": trainer.step} if trainer.started else {}
    try:
        StatusFile(trainer.run.path).update(state="failed", error=error, hint=hint or None, ended_at=now(), **fields)
        trainer.metrics.event(error + (f"; {hint}" if hint else ""), "error")
        trainer.metrics.end("failed", error=error, hint=hint or None, **fields)
    except OSError as exc:
        print(f"sdtui-train: the failure could not be recorded in {trainer.run.path} ({exc.strerror})", file=sys.stderr)


def _describe_failure(trainer: Trainer, exc: BaseException) -> tuple[str, str]:
    if isinstance(exc, TrainingFailed):
        return exc.error, exc.hint
    if isinstance(exc, UserError):
        hint = ""
        if type(exc).__name__ == "ModelLoadError":
            hint = "fix model.path in run.toml, then start the run again"
        return str(exc), hint
    if _is_oom(exc):
        settings = getattr(trainer, "settings", {})
        return (
            f"out of memory at step {trainer.step + 1}",
            oom_hint(getattr(trainer, "family", "sd1"), getattr(trainer, "method_kind", "lora"), settings, trainer.step + 1, _run_shape(trainer)),
        )
    return f"the trainer crashed at step {trainer.step + 1} ({type(exc).__name__}: {first_line(exc)})", "see train.log for the traceback"


def _run_shape(trainer: Trainer) -> Any:
    """The fit's inputs as the planner has them: class images paired, the distributed backend."""
    from core.plan.picker import run_shape

    data = getattr(trainer, "data", None)
    class_images = len(data.train_data.class_items) if data is not None else 0
    config = getattr(trainer, "config", None)
    return run_shape(getattr(trainer, "method_kind", "lora"), class_images, config.distributed if config is not None else None)


def _end_process_group() -> None:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - best effort at exit
        pass
