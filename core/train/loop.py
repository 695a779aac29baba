"""The training loop: ``python -m core.train RUN_DIR`` reads run.toml and trains with accelerate.

One optimizer step is ``accumulation`` micro-batches of this rank's share of the epoch
(``core.plan.schedule`` decides which batches and when a step is due, so the planner's step
count is the trainer's). Gradient accumulation is driven here (``no_sync`` on the micro-batches
that do not end a step, the loss divided by the micro-batches of the step) rather than by
accelerate's counter, which would not end a step at an epoch's short end. The LR schedule is
stepped once per optimizer step by this loop, never through accelerate's prepared scheduler
(which steps ``num_processes`` times per call).

The ``Trainer`` puts together parts with explicit inputs: ``startup`` builds the ``Session``
(accelerator, model and method, data, optimizer) and the run's ``Progress``; a ``step.Stepper``
computes, a ``saving.Saver`` writes checkpoints, outputs and samples, and a
``control.ControlPoller`` returns the agreed control.json actions, which this loop carries out.
This module holds the epoch iteration, the step lines and the process entry point.
"""

from __future__ import annotations

import logging
import math
import os
import random
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from core.errors import UserError
from core.folder_watch import FolderWatch, again_if_moved, moved_sentence, weak_follower
from core.plan import schedule
from core.runs.control_file import ControlReader
from core.runs.rundir import RunDir
from core.train import startup, trackers, validation
from core.train.control_poller import PAUSE_POLL_S, ControlPoller, Polled
from core.train.disk import DiskFull, Reserve
from core.train.metrics_writer import EventHandler, MetricsWriter, ProgressLog, memory_sample
from core.train.phases import Phases, StartupStopped
from core.train.progress import Progress
from core.train.saving import Saver
from core.train.session import Accel, Session
from core.train.status import Heartbeat, NotOwner, StatusFile, TrainingFailed, first_line, nan_hint, now, oom_hint
from core.train.step import Stepper

#: How often (in optimizer steps) the loss is read back from a GPU; on the CPU every step.
GPU_LOG_EVERY = 10
#: Seconds between status.json step updates (each is an fsynced atomic write).
STATUS_EVERY_S = 2.0


class Trainer:
    """One training run in one process (rank) of ``accelerate launch``.

    ``setup()`` builds the session and the stepper, saver and control poller over it; before
    that ``config`` and ``session`` are None and ``progress`` stands at step 0, which is what a
    failure during start-up is reported with. ``weights_hash``: a file each rank appends a hash
    of its trainable weights to at every checkpoint (``Saver``), for the DDP tests; None writes
    nothing.
    """

    def __init__(self, run_dir: str | os.PathLike[str], attempt: str = "", weights_hash: Path | None = None) -> None:
        self.run = RunDir(run_dir)
        self.attempt = attempt
        self.weights_hash = weights_hash
        self.started = False
        #: Set by SIGTERM; an Event, so that the start-up's stop check holds it and not the trainer.
        self.signalled = threading.Event()
        self.folder_lock: Any = None
        self.reserve = Reserve(self.run.path / ".reserve")
        self.folder = FolderWatch(self.run.path)
        self.moved_to: Path | None = None
        self.config: Any = None
        self.accel: Accel | None = None
        self.session: Session | None = None
        self.progress = Progress()
        self.metrics = MetricsWriter(self.run.metrics, enabled=False)
        self.status = StatusFile(self.run.path, enabled=False)
        self.heartbeat = Heartbeat(self.run.heartbeat, enabled=False)
        self.phases = Phases(self.status, self.metrics, enabled=False)
        self.progress_log = ProgressLog(0, enabled=False)
        self.control: ControlReader | None = None
        self._status_at = 0.0
        self.log_every = 1
        self.validator: validation.Validator | None = None

    def setup(self) -> None:
        """Read the config, start accelerate, own the folder (rank 0), build the session (model, data,
        optimizer and schedule) and resume from the newest checkpoint."""
        self.config = startup.read_config(self.run)
        started_at, session_id = time.time(), random.randint(0, 2**31 - 1)
        accel = self.accel = startup.start_accelerator(self.config, self.run)
        is_main = accel.acc.is_main_process
        if is_main:
            self.folder_lock = startup.own_folder(self.run, self.attempt)
            self.reserve.make()
        self.metrics = MetricsWriter(self.run.metrics, enabled=is_main)
        self.status = StatusFile(self.run.path, enabled=is_main)
        self.status.follow = weak_follower(self._follow_move)
        self.phases = Phases(self.status, self.metrics, enabled=is_main)
        self.heartbeat = Heartbeat(self.run.heartbeat, enabled=is_main, tick=self.phases.tick)
        recorded = self.status.read()
        control = self.control = startup.control_reader(self.run, self.attempt, recorded)
        self.phases.should_stop = startup.stop_check(control, self.signalled.is_set, time.monotonic)
        with self.heartbeat.busy():
            self.session, self.progress = startup.build_session(
                self.config,
                accel,
                self.run,
                self.attempt,
                self.metrics,
                self.status,
                self.phases,
                started_at,
                session_id,
                control,
                recorded,
            )
        self.progress_log = ProgressLog(self.progress.total_steps, enabled=is_main)
        self.stepper = Stepper(self.session, self.progress)
        self.saver = Saver(self.session, self.progress, self.run, self.metrics, self.status, self.heartbeat, self.weights_hash, follow=weak_follower(self._follow_move))
        self.poller = ControlPoller(control, self.session.acc, self.status)
        self.validator = validation.make_validator(self.config, self.session, self.stepper)
        if self.validator is not None:
            self.metrics.event(f"validation loss on {len(self.validator.items)} images every {self.validator.every_n_steps} steps (they never train)")
        self.log_every = GPU_LOG_EVERY if self.session.device.type == "cuda" else 1
        self.started = True

    def train(self) -> str:
        """Run to the end (or a stop); return the final state."""
        session, progress = self._session(), self.progress
        sched = session.sched
        progress.epoch_number = progress.epoch + 1
        self.status.update(
            state="running",
            step=progress.step,
            total_steps=progress.total_steps,
            epoch=progress.epoch_number,
            steps_per_epoch=progress.steps_per_epoch,
        )
        if progress.step == 0:
            self.metrics.event(
                f"training {session.method_kind} on {session.family}: {progress.total_steps} steps, {progress.steps_per_epoch} per epoch, "
                f"{session.world} process(es), {session.data.train_data.items_per_epoch} items per epoch, precision {session.accel.precision}"
            )
            if sched["sample_at_start"]:
                self.saver.sample()
        accumulation = int(sched["gradient_accumulation"])
        pending: list[tuple[int, int, Any, tuple[float, float | None], float, int]] = []
        first_step = True
        while progress.step < progress.total_steps:
            epoch = progress.epoch
            batches = session.data.for_epoch(epoch)
            count = len(batches)
            step_start, images, loss_sum = time.perf_counter(), 0, None
            for index, batch, weight in session.data.iterate(epoch, batches, progress.batch_index):
                group_start = index - (index % accumulation)
                group_size = min(accumulation, count - group_start)
                due = schedule.optimizer_step_due(index, count, accumulation)
                loss = self.stepper.micro_step(batch, index, due, group_size, weight)
                loss_sum = loss / group_size if loss_sum is None else loss_sum + loss / group_size
                images += len(batch["captions"])
                if not due:
                    continue
                lr = (self.stepper.current_lr(), self.stepper.step_size())
                self.stepper.optimizer_step()
                progress.step += 1
                if first_step:
                    first_step = False
                    self.phases.first_step()
                epoch_done = index + 1 >= count
                progress.epoch, progress.batch_index = (epoch + 1, 0) if epoch_done else (epoch, index + 1)
                elapsed = time.perf_counter() - step_start
                pending.append((progress.step, epoch, session.acc.reduce(loss_sum, "mean"), lr, elapsed, images * session.world))
                progress.epoch_number = epoch + 1
                images, loss_sum = 0, None
                if len(pending) >= self.log_every or progress.step == progress.total_steps:
                    self._flush(pending)
                final = self._after_step(epoch_done, pending)
                if final:
                    return final
                if progress.step >= progress.total_steps:
                    break
                # saves, samples and a pause are not part of the next step's time (nor of the ETA)
                step_start = time.perf_counter()
            if progress.epoch == epoch and progress.step < progress.total_steps:  # nothing left of this epoch on this rank
                progress.epoch, progress.batch_index = epoch + 1, 0
        self._flush(pending)
        self.saver.save(final=True)
        self.status.update(state="finished", step=progress.step, epoch=progress.epoch_number, ended_at=now())
        self.metrics.event("training finished")
        self.metrics.end("finished", step=progress.step)
        return "finished"

    def _session(self) -> Session:
        if self.session is None:
            raise RuntimeError("Trainer.setup() builds the session before train()")
        return self.session

    def _after_step(self, epoch_done: bool, pending: list) -> str | None:
        """Epoch bookkeeping, periodic saves and samples, control requests; a final state ends the run."""
        sched, progress = self._session().sched, self.progress
        step = progress.step
        epoch_number = progress.epoch  # epochs completed so far (1-based number of the one just ended)
        self._follow_move()
        if epoch_done:
            self._flush(pending)
            self.metrics.write("epoch", epoch=epoch_number, step=step)
        last = step >= progress.total_steps
        save_due = (sched["save_every_steps"] and step % sched["save_every_steps"] == 0) or (epoch_done and sched["save_every_epochs"] and epoch_number % sched["save_every_epochs"] == 0)
        if save_due and not last:
            self._flush(pending)
            self.saver.save()
        sample_due = (sched["sample_every_steps"] and step % sched["sample_every_steps"] == 0) or (
            epoch_done and sched["sample_every_epochs"] and epoch_number % sched["sample_every_epochs"] == 0
        )
        if sample_due:
            self._flush(pending)
            self.saver.sample()
        if self.validator is not None and self.validator.due(step):
            self._flush(pending)
            validation.record(self.validator, step, self.metrics, session=self._session(), follow=self._follow_move)
        if last:
            return None
        if epoch_done or time.monotonic() - self._status_at >= STATUS_EVERY_S:
            self.status.update(step=step, epoch=progress.epoch_number)
            self._status_at = time.monotonic()
        if epoch_done or step % self.log_every == 0:  # every rank polls at the same steps
            return self._control(pending)
        return None

    def _follow_move(self) -> bool:
        """Rank 0: when the run folder was moved, write everything at its new path from now on and
        stop there at the next poll (the launch command and the dashboards name the old path).
        True when it found a move now."""
        if not self.status.enabled:
            return False
        new = self.folder.moved_to()
        if new is None:
            return False
        self.moved_to = new
        for each in (self.run, self.status.run):
            each.relocate(new)
        self.poller.reader.path = self.run.control_json
        self.heartbeat.path = self.run.heartbeat
        self.reserve.path = self.run.path / ".reserve"
        trackers.follow(self._session().acc, new)
        self.metrics.event(f"the run folder was moved to {new}; saving and stopping there", level="warning")
        return True

    def _control(self, pending: list) -> str | None:
        """Carry out the agreed control requests at a step boundary; ``"stopped"`` ends the run."""
        polled = self.poller.poll(self.signalled.is_set() or self.moved_to is not None)
        actions = polled.actions
        if not actions:
            return None
        self._flush(pending)
        if "pause" in actions and "resume" not in actions and "stop" not in actions:
            self._carry_out(polled)
            self.status.update(state="paused", step=self.progress.step)
            self.metrics.event(f"paused at step {self.progress.step}")
            while "resume" not in actions and "stop" not in actions:
                time.sleep(PAUSE_POLL_S)
                polled = self.poller.poll(self.signalled.is_set())
                actions = polled.actions
                if actions:
                    self._carry_out(polled)
            if "resume" in actions and "stop" not in actions:
                self.status.update(state="running")
                self.metrics.event(f"resumed at step {self.progress.step}")
            return "stopped" if "stop" in actions else None
        return "stopped" if self._carry_out(polled) else None

    def _carry_out(self, polled: Polled) -> bool:
        """Save / sample / stop as asked (every rank takes part), acknowledge; True when stopped."""
        actions, step = polled.actions, self.progress.step
        if "save" in actions and "stop" not in actions:
            self.saver.save(manual=True)
        if "sample" in actions:
            self.saver.sample()
        self.poller.ack(polled.requests)
        if "stop" in actions:
            self.metrics.event(f"stop requested; saving at step {step}")
            self.saver.save(final=True)
            moved = {"error": moved_sentence(self.moved_to), "hint": f"sdtui resume {self.moved_to}"} if self.moved_to else {}
            self.status.update(state="stopped", step=step, epoch=self.progress.epoch_number, ended_at=now(), **moved)
            self.metrics.end("stopped", step=step)
            return True
        return False

    def _flush(self, pending: list) -> None:
        """Write the buffered step lines (one host sync for the lot) with every rank's memory."""
        if not pending:
            return
        self._follow_move()  # before TensorBoard writes by path
        import torch

        session = self._session()
        losses = torch.stack([p[2] for p in pending]).float().cpu().tolist()
        mem = self._memory()
        for (step, epoch, _, (lr, step_size), elapsed, images), loss in zip(pending, losses):
            if not math.isfinite(loss):
                raise TrainingFailed(f"the loss became {loss} (not finite) at step {step}", nan_hint(session.settings, float(session.sched["learning_rate"])))
            speed = round(images / elapsed, 4) if elapsed > 0 else None
            own = {} if step_size is None else {"step_size": step_size}
            self.metrics.write("step", step=step, epoch=epoch + 1, loss=loss, lr=lr, **own, images_per_s=speed, step_time_s=round(elapsed, 5), mem=mem)
            values = {"loss": loss, "lr": lr, **own, "images_per_s": speed}
            again_if_moved(lambda: trackers.log_step(session.acc, step, values), self._follow_move)  # noqa: B023 - called at once
            self.progress_log.step(step, loss, lr, speed, elapsed, step_size)
        pending.clear()

    def _memory(self) -> list[dict[str, int]]:
        import torch

        session = self._session()
        allocated, peak = memory_sample(session.device)
        mine = torch.tensor([allocated, peak], dtype=torch.int64, device=session.device)
        everyone = session.acc.gather(mine.unsqueeze(0)).cpu().tolist() if session.world > 1 else [mine.tolist()]
        return [{"rank": r, "allocated": a, "peak": p} for r, (a, p) in enumerate(everyone)]


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def main(run_dir: str, attempt: str = "", weights_hash: Path | None = None) -> int:
    """Train the run in ``run_dir``; record the final state; 0 finished or stopped, 1 failed, 3 not
    this trainer's folder (another trainer or attempt owns it: nothing is written)."""
    trainer = Trainer(run_dir, attempt, weights_hash)

    def on_term(signum: int, _frame: Any) -> None:
        trainer.signalled.set()

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        trainer.setup()
        state = trainer.train()
    except NotOwner as exc:
        print(f"sdtui-train: {exc}", file=sys.stderr)
        return 3
    except StartupStopped as exc:
        if trainer.accel is None or trainer.accel.acc.is_main_process:
            _record_startup_stop(trainer, str(exc))
        return 0
    except Exception as exc:  # noqa: BLE001 - every failure is recorded with its sentence
        if isinstance(exc, DiskFull):
            trainer.reserve.release()
        error, hint = _describe_failure(trainer, exc)
        if not isinstance(exc, (UserError, TrainingFailed)):
            traceback.print_exc()
        print(f"sdtui-train: {error}" + (f" ({hint})" if hint else ""), file=sys.stderr)
        if trainer.accel is None or trainer.accel.acc.is_main_process:
            _record_failure(trainer, error, hint)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
        logger = logging.getLogger("core.train")
        for handler in [h for h in logger.handlers if isinstance(h, EventHandler)]:
            logger.removeHandler(handler)
        trainer.metrics.close()
        if trainer.accel is not None and trainer.accel.acc.log_with:
            trainer.accel.acc.end_training()
        trainer.reserve.release()
        if trainer.folder_lock is not None:
            trainer.folder_lock.close()
        _end_process_group()
    return 0 if state in ("finished", "stopped") else 1


def _record_startup_stop(trainer: Trainer, message: str) -> None:
    """A stop during start-up: status.json ``stopped`` (its requests acknowledged), train.log and the
    metrics' last lines say where it stopped and that what was cached is kept; nothing to save yet."""
    print(f"sdtui-train: {message}", flush=True)
    control = trainer.control
    requests = [r for r in control.pending() if r["action"] == "stop"] if control is not None else []
    ack = control.acknowledge(requests, now()) if control is not None else {}
    trainer.status.update(state="stopped", phase=None, note=message, ended_at=now(), **ack)
    trainer.metrics.event(message)
    trainer.metrics.end("stopped", step=trainer.progress.step)


def _record_failure(trainer: Trainer, error: str, hint: str) -> None:
    """status.json ``failed`` (the step only once training started: a failed resume keeps the
    recorded step) and the metrics' last lines; a write that fails here (a full disk) is reported."""
    fields = {"step": trainer.progress.step} if trainer.started else {}
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
    step = trainer.progress.step + 1
    if _is_oom(exc):
        family, kind, settings = _fit_facts(trainer)
        return f"out of memory at step {step}", oom_hint(family, kind, settings, step, _run_shape(trainer))
    return f"the trainer crashed at step {step} ({type(exc).__name__}: {first_line(exc)})", "see train.log for the traceback"


def _fit_facts(trainer: Trainer) -> tuple[str | None, str, dict[str, Any]]:
    """Family, method and settings of the run as far as start-up got: the loaded model's family
    (None before the model is loaded: the advice is then the generic one, never a guess)."""
    config = trainer.config
    if config is None:
        return None, "lora", {}
    family = trainer.session.family if trainer.session is not None else None
    return family, str(config.method), config.settings


def _run_shape(trainer: Trainer) -> Any:
    """The fit's inputs as the planner has them: class images paired, the distributed backend."""
    from core.plan.fit import run_shape

    session, config = trainer.session, trainer.config
    class_images = len(session.data.train_data.class_items) if session is not None else 0
    kind = str(config.method) if config is not None else "lora"
    return run_shape(kind, class_images, config.distributed if config is not None else None)


def _end_process_group() -> None:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - best effort at exit
        pass
