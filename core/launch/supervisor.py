"""``python -m core.launch.supervisor RUN_DIR``: the detached parent of ``accelerate launch``.

Started by ``sdtui train`` (and ``sdtui resume``) in a new session, it ignores SIGHUP, holds
the run folder's lock (taken by the command that started it and handed over as an open file,
so two starts can never both own a folder), rebuilds the launch command from the folder for a
new attempt (a fresh attempt id the trainer checks), runs it with its output into
``train.log``, records every process of the run with its create time, and writes the final
state when the launcher exits — never replacing a trainer's ``stopped``/``failed``.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import IO, Any

import psutil

from core import procs
from core.errors import UserError
from core.folder_watch import FolderWatch
from core.launch.command import CODE_ROOT, format_command, launch_command, launch_env, read_accelerate_config
from core.monitor.logs import WRAPPERS as _WRAPPERS
from core.monitor.logs import is_noise, user_view
from core.runs.control_file import stop_requested
from core.runs.locks import hold, lock
from core.runs.readers import current_attempt, integer, tail_records
from core.runs.rundir import RunDir
from core.runs.states import FINAL_STATES

_EXCEPTION = re.compile(r"^(?:\[rank\d+\]:\s*)?([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Failure)\w*)(?::\s*(.*))?$")
_RANK_PREFIX = re.compile(r"^\[rank\d+\]:\s?")
_KILLED = re.compile(r"died with <Signals\.SIG\w+: (\d+)>|Signal (\d+) \(SIG\w+\) received by PID|exitcode\s*:\s*-(\d+)\b")
TAIL_LINES = 30
#: Signals that end a process from outside (anything else is a crash of the process itself).
_KILLING = (signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)


def lock_run(run: RunDir) -> IO[str] | None:
    """Take the run folder's supervisor lock; None when another supervisor (or a starting one) holds it."""
    return lock(run.supervisor_lock)


def is_locked(run: RunDir) -> bool:
    """True while a supervisor holds the run folder."""
    from core.runs.locks import is_locked as held

    return held(run.supervisor_lock)


def log_lines(path: Path, start: int = 0) -> list[str]:
    """The non-empty lines of the log after byte ``start`` (at most its last 256 KiB; rank prefixes removed)."""
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(start, size - 256 * 1024))
            text = handle.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return []
    kept = [_RANK_PREFIX.sub("", line.rstrip()) for line in text.splitlines()]
    return [line for line in kept if line.strip()]


def log_tail(path: Path, lines: int = TAIL_LINES, start: int = 0) -> list[str]:
    """The last ``lines`` lines of the log after byte ``start`` as the user reads them: without the
    libraries' known noise and the launcher's wrapping traceback (core.monitor.logs.user_view)."""
    return user_view(log_lines(path, start))[-lines:]


def error_summary(lines: list[str]) -> str:
    """The root-cause exception line of a log tail (not the launcher's "child failed" wrapper)."""
    lines = [line for line in lines if not is_noise(line)]
    found = [line.strip() for line in lines if _EXCEPTION.match(line.strip())]
    causes = [line for line in found if not any(w in line for w in _WRAPPERS)]
    if causes:
        return causes[-1]
    if found:
        return found[-1]
    return lines[-1].strip() if lines else "the training process exited without output"


def killed_by(lines: list[str]) -> int | None:
    """The signal that killed a trainer process, as the launcher reported it in the log (accelerate's
    ``died with <Signals.SIGKILL: 9>``, torchrun's ``Signal 9 (SIGKILL) received by PID``), else None."""
    for line in reversed(lines):
        found = _KILLED.search(line)
        if found:
            return int(next(group for group in found.groups() if group))
    return None


def signal_name(number: int) -> str:
    """``signal 9 (SIGKILL)`` for a signal number."""
    try:
        return f"signal {number} ({signal.Signals(number).name})"
    except ValueError:
        return f"signal {number}"


def final_state(trainer_state: str, exit_code: int, stop_requested: bool) -> str:
    """The state to record when the launcher has exited.

    A trainer's own final state wins, except the ``stopped`` of a trainer that was only told to stop
    because its launcher was killed (a negative exit code, no stop asked for): that run failed.
    Otherwise a requested stop is ``stopped``, a clean exit ``finished`` and anything else ``failed``.
    """
    if stop_requested:
        return trainer_state if trainer_state in FINAL_STATES else "stopped"
    if trainer_state in FINAL_STATES and not (trainer_state == "stopped" and exit_code < 0):
        return trainer_state
    return "finished" if exit_code == 0 else "failed"


class Supervisor:
    """Runs one attempt of a run: launch, watch, record, finish."""

    def __init__(self, run: RunDir) -> None:
        self.run = run
        self.me = procs.describe(psutil.Process(), "supervisor")
        self.child: subprocess.Popen[bytes] | None = None
        self.attempt_id = ""
        self.terminated = False
        self.records: dict[int, dict[str, Any]] = {self.me["pid"]: self.me}
        self.folder = FolderWatch(run.path)

    def _on_term(self, signum: int, _frame: Any) -> None:
        """SIGTERM/SIGINT: pass SIGTERM on to the launcher (the trainer may save); SIGUSR1: kill the tree now."""
        self.terminated = True
        if self.child is None or self.child.poll() is not None:
            return
        if signum == signal.SIGUSR1:
            try:
                victims = procs.tree([psutil.Process(self.child.pid)])
            except psutil.Error:
                return
            procs.signal_all(victims, signal.SIGKILL)
        else:
            self.child.send_signal(signal.SIGTERM)

    def _follow_move(self) -> None:
        """Write into the run folder's new path once it was moved (the trainer saves and stops there)."""
        new = self.folder.moved_to()
        if new is not None:
            self.run.relocate(new)

    def _pids(self) -> list[dict[str, Any]]:
        return list(self.records.values())

    def _refresh_tree(self) -> None:
        """Record new descendants; keep status.json's ``pids`` in place if a writer dropped them."""
        if self.child is None:
            return
        changed = False
        try:
            for proc in psutil.Process(self.child.pid).children(recursive=True):
                if proc.pid not in self.records:
                    try:
                        self.records[proc.pid] = procs.describe(proc, "worker")
                        changed = True
                    except psutil.Error:
                        continue
        except psutil.Error:
            pass
        if changed or self.run.read_status().get("pids") != self._pids():
            self.run.write_status(pids=self._pids())

    def run_attempt(self) -> int:
        """Launch, wait, record the final state; return the launcher's exit code."""
        status = self.run.read_status()
        started = time.time()
        attempt = integer(status.get("attempt")) + 1
        self.attempt_id = uuid.uuid4().hex[:16]
        try:
            accel = read_accelerate_config(self.run.accelerate_yaml)
        except UserError as exc:
            self.run.write_status(state="failed", error=str(exc), hint=f"sdtui resume {self.run.id}", exit_code=2, ended_at=round(time.time(), 3))
            return 2
        argv = launch_command(self.run.path, accel, attempt=self.attempt_id)
        extra = launch_env(status.get("device") == "cpu", one_machine=integer(accel.get("num_machines"), 1) == 1)
        self.run.write_status(
            state="starting",
            attempt=attempt,
            attempt_id=self.attempt_id,
            started_at=round(started, 3),
            pids=self._pids(),
            trainer_pids=None,
            exit_code=None,
            error=None,
            hint=None,
            log_tail=None,
            ended_at=None,
            exit_unknown=None,
            command=format_command(argv, extra),
        )
        with open(self.run.log, "ab") as log:
            log_start = log.tell()
            log.write(f"[sdtui] attempt {attempt} at {time.strftime('%Y-%m-%d %H:%M:%S')} in {self.run.path}: {format_command(argv)}\n".encode())
            log.flush()
            try:
                self.child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **extra}, cwd=CODE_ROOT)
            except OSError as exc:
                self.run.write_status(state="failed", error=f"the launcher could not start: {exc}", ended_at=round(time.time(), 3))
                return 127
            self.records[self.child.pid] = procs.describe(psutil.Process(self.child.pid), "launcher")
            self.run.write_status(pids=self._pids())
            while True:
                try:
                    code = self.child.wait(timeout=1.0)
                    break
                except subprocess.TimeoutExpired:
                    self._follow_move()
                    try:
                        self._refresh_tree()
                    except FileNotFoundError:
                        self._follow_move()  # moved between the check and the write: again at the next second
        self._follow_move()
        leftovers = [r for r in self._pids() if r["pid"] != self.me["pid"]]
        procs.kill_tree(leftovers, term_grace_s=5.0)
        self._finish(code, started, log_start)
        return code

    def _finish(self, code: int, started: float, log_start: int) -> None:
        status = self.run.read_status()
        trainer_state = str(status.get("state", ""))
        state = final_state(trainer_state, code, self.terminated or stop_requested(self.run.control_json, self.attempt_id, started))
        fields: dict[str, Any] = {"state": state, "exit_code": code, "ended_at": round(time.time(), 3), "pids": self._pids()}
        if state == "failed":
            lines = log_lines(self.run.log, start=log_start)
            tail = user_view(lines)[-TAIL_LINES:]
            fields["log_tail"] = tail
            killed = killed_message(self.run, code, lines)
            if killed:
                fields["error"], fields["hint"] = killed, failure_hint(self.run, tail)
            else:
                if not (trainer_state == "failed" and status.get("error")):
                    fields["error"] = error_summary(tail)
                if not status.get("hint"):
                    fields["hint"] = failure_hint(self.run, tail)
        self.run.write_status(**fields)
        self._end_line(state, code, fields.get("error") or status.get("error"))
        with open(self.run.log, "ab") as log:
            log.write(f"[sdtui] launcher exited with code {code}; run {state}\n".encode())

    def _end_line(self, state: str, code: int, error: Any) -> None:
        """Append the attempt's ``end`` line to metrics.jsonl when the trainer did not (it crashed, or
        never started), so a status rebuilt from the folder knows how the attempt ended."""
        from core.train.metrics_writer import MetricsWriter

        attempt, after = current_attempt(tail_records(self.run.metrics))
        if attempt is not None and attempt.get("id") == self.attempt_id and any(r.get("type") == "end" for r in after):
            return
        writer = MetricsWriter(self.run.metrics)
        try:
            if attempt is None or attempt.get("id") != self.attempt_id:
                status = self.run.read_status()
                writer.write("attempt", attempt=integer(status.get("attempt"), 1), id=self.attempt_id, resume_step=integer(status.get("step")))
            writer.end(state, exit_code=code, error=error if isinstance(error, str) else None)
        finally:
            writer.close()


def killed_message(run: RunDir, code: int, lines: list[str]) -> str | None:
    """The error of an attempt whose launcher (a negative exit code) or trainer (the launcher's report
    in the log) was killed by a signal, with where a resume continues; None when nothing was killed.
    A killed process explains the other ranks' errors (a closed connection), so it comes first."""
    number = -code if code < 0 else killed_by(lines)
    if number is None:
        return None
    who = "the launcher process (accelerate launch)" if code < 0 else "the trainer process"
    checkpoint = run.latest_checkpoint()
    after = f"sdtui resume {run.id} continues from {checkpoint.name}" if checkpoint else f"there is no checkpoint yet, so sdtui resume {run.id} starts it from the beginning"
    why = ", by hand or by the system when memory ran out" if number == signal.SIGKILL else ""
    how = "was killed" if number in _KILLING else "crashed with"
    return f"{who} {how} ({signal_name(number)}{why}); {after}"


def failure_hint(run: RunDir, tail: list[str]) -> str:
    """What to do after a failure the trainer gave no hint for: read the log when it says more than
    its tail, resume when there is a checkpoint, else start the run again."""
    parts = []
    if any(line.strip() for line in tail):
        parts.append(f"read {run.log} for the whole log")
    if run.latest_checkpoint() is not None:
        parts.append(f"after fixing the cause, sdtui resume {run.id} continues from the newest checkpoint")
    else:
        parts.append(f"after fixing the cause, start it again with sdtui train {run.run_toml} (there is no checkpoint to resume from)")
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m core.launch.supervisor RUN_DIR [--lock-fd FD]``.

    ``--lock-fd`` is the run folder's supervisor lock, already taken by ``sdtui train``/``resume``
    and passed on open; without it the supervisor takes the lock itself.
    """
    parser = argparse.ArgumentParser(prog="python -m core.launch.supervisor")
    parser.add_argument("run_dir")
    parser.add_argument("--lock-fd", type=int, default=None)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    run = RunDir(args.run_dir)
    if not run.status_json.is_file():
        print(f"sdtui supervisor: {run.path} is not a run folder (no status.json)", file=sys.stderr)
        return 2
    held = _inherited_lock(run, args.lock_fd) if args.lock_fd is not None else lock_run(run)
    if held is None:
        print(f"sdtui supervisor: another supervisor already runs {run.path}", file=sys.stderr)
        return 2
    from core.runs.locks import is_locked as locked

    if locked(run.trainer_lock):
        print(f"sdtui supervisor: a trainer still writes into {run.path}; stop it first (sdtui stop {run.id})", file=sys.stderr)
        held.close()
        return 2
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    supervisor = Supervisor(run)
    hold(held, supervisor.me)
    signal.signal(signal.SIGTERM, supervisor._on_term)
    signal.signal(signal.SIGINT, supervisor._on_term)
    signal.signal(signal.SIGUSR1, supervisor._on_term)
    try:
        supervisor.run_attempt()
    finally:
        held.close()
    return 0


def _inherited_lock(run: RunDir, fd: int) -> IO[str] | None:
    """The lock handed over by the starting command, when ``fd`` really is this folder's lock file."""
    try:
        same = os.path.samestat(os.fstat(fd), os.stat(run.supervisor_lock))
    except OSError:
        return None
    return os.fdopen(fd, "a+") if same else None


if __name__ == "__main__":
    sys.exit(main())
