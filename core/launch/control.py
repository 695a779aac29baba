"""Control of a run from any terminal: requests to the trainer through control.json, and stop.

The control.json format, its writing and its acknowledgement are ``core.runs.control_file``'s.
"""

from __future__ import annotations

import fcntl
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core import procs
from core.errors import UserError
from core.runs import control_file
from core.runs.rundir import RunDir
from core.runs.states import ENDED_STATES, FINAL_STATES, LOST, STALLED, has_state

#: Seconds the processes left after the trainer saved and stopped get to end on SIGTERM.
_LEFTOVER_GRACE_S = 5.0


def request(run: RunDir, action: str) -> str:
    """Append a request for the trainer to control.json, for the run's current attempt; return its id."""
    attempt = run.read_status().get("attempt_id")
    return control_file.append_request(run.control_json, action, attempt if isinstance(attempt, str) else "")


def acknowledged(run: RunDir, rid: str) -> bool:
    """True once the trainer has acknowledged request ``rid``."""
    return control_file.acknowledged(run.read_status(), rid)


def wait_ack(run: RunDir, rid: str, timeout_s: float) -> bool:
    """Wait up to ``timeout_s`` for the acknowledgement; False when the run ended or time ran out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if acknowledged(run, rid):
            return True
        if run.state in ENDED_STATES:
            return acknowledged(run, rid)
        time.sleep(0.2)
    return False


def ask(run: RunDir, action: str) -> str:
    """Send ``save``, ``sample``, ``pause`` or ``resume`` to a live run (UserError when it cannot take it)."""
    state = run.state
    if state in ENDED_STATES:
        hint = f"; sdtui resume {run.id} continues it" if state != "finished" else ""
        raise UserError(f"run {run.id} is {state}, so it cannot {action}{hint}")
    if action == "pause" and state == "paused":
        raise UserError(f"run {run.id} is already paused; sdtui resume {run.id} continues it")
    if action == "resume" and state != "paused":
        raise UserError(f"run {run.id} is {state}, not paused; there is nothing to resume")
    return request(run, action)


@dataclass
class StopResult:
    """How a stop went."""

    state: str
    saved: bool
    signalled: list[int]


def stop_run(
    run: RunDir,
    now: bool = False,
    grace_s: float = 120.0,
    term_grace_s: float = 15.0,
    progress: Callable[[str], None] | None = None,
) -> StopResult:
    """Stop a run: ask the trainer to save and stop, then SIGTERM, then SIGKILL every process left.

    ``now`` skips the save. Afterwards no process of the run is running. UserError for a run that
    has already ended or when another stop of the same run is under way.
    """
    say = progress or (lambda _msg: None)
    status = run.read_status()
    state = run.derive_state(status)
    if state in FINAL_STATES:
        raise UserError(f"run {run.id} has already ended ({state}); there is nothing to stop")
    with open(run.stop_lock, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"another sdtui stop is already stopping run {run.id}; wait for it to finish") from None
        saved = False
        if not now and state != LOST:
            rid = request(run, "stop")
            say(f"asked {run.id} to save and stop; waiting up to {grace_s:.0f} s")
            saved = _wait_final(run, grace_s)
        else:
            rid = ""
        signalled: list[int] = []
        if not saved and run.alive_processes():
            say("the trainer did not stop in time; terminating its processes" if not now else "terminating the run's processes")
            signalled = _terminate(run, term_grace_s, now=now)
        elif not saved:
            say("none of the run's processes is running; recording it as stopped")
        elif run.alive_processes():
            say("the trainer saved and stopped but the supervisor does not answer; terminating what is left of the run")
            signalled = _terminate(run, min(term_grace_s, _LEFTOVER_GRACE_S))
        _wait_final(run, 10.0)
        final = run.read_status()
        end_state = run.derive_state(final)
        if end_state not in FINAL_STATES:
            run.write_status(state="stopped", ended_at=round(time.time(), 3))
            end_state = "stopped"
        return StopResult(end_state, (bool(rid) and acknowledged(run, rid)) or saved, signalled)


def _wait_final(run: RunDir, timeout_s: float) -> bool:
    """Wait until the run has a final state and no recorded process is left, or until the trainer
    itself has recorded its final state and its own processes are gone (a hung or SIGSTOPped
    supervisor then does not hold the stop up)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = run.read_status()
        final = status.get("state") in FINAL_STATES
        if final and not run.alive_processes(status):
            return True
        if final and _trainer_gone(status):
            return True
        if not run.alive_processes(status) and status.get("pids"):
            return final
        time.sleep(0.2)
    return False


def _trainer_gone(status: dict[str, Any]) -> bool:
    """True when status.json records the trainer's processes and none of them runs any more."""
    records = status.get("trainer_pids")
    return isinstance(records, list) and bool(records) and not procs.alive([r for r in records if isinstance(r, dict)])


def _terminate(run: RunDir, term_grace_s: float, now: bool = False) -> list[int]:
    """Ask the supervisor to end the launcher — SIGTERM (the trainer may still save) or, ``now``,
    SIGUSR1 (it kills the tree at once) — and it records ``stopped``. Without a supervisor every
    process of the run gets SIGTERM (SIGKILL when ``now``). Whatever is left then gets SIGKILL."""
    records = run.processes()
    everything = procs.tree(procs.alive(records))
    supervisors = procs.alive([r for r in records if r.get("role") == "supervisor"])
    if supervisors:
        procs.signal_all(supervisors, signal.SIGUSR1 if now else signal.SIGTERM)
    else:
        procs.signal_all(everything, signal.SIGKILL if now else signal.SIGTERM)
    procs.signal_all(everything, signal.SIGCONT)  # a SIGSTOPped process takes its signal only once continued
    left = procs.wait_gone(everything, term_grace_s)
    if left:
        rest = procs.tree(left)
        procs.signal_all(rest, signal.SIGKILL)
        procs.wait_gone(rest, 5.0)
    return [p.pid for p in everything]


def status_fields(run: RunDir) -> dict[str, Any]:
    """status.json plus derived fields (state with ``lost``, id, path, newest checkpoint, the output files)."""
    status = run.read_status()
    problem = run.status_problem
    if not has_state(status):
        status = run.rebuild_status()
    checkpoint = run.latest_checkpoint()
    state = run.derive_state(status)
    fields = {
        **status,
        "id": run.id,
        "path": str(run.path),
        "state": state,
        "recorded_state": status.get("state"),
        "latest_checkpoint": str(checkpoint) if checkpoint else None,
        "outputs": [str(path) for path in run.outputs(status)],
    }
    if problem:
        fields["problem"] = problem
    if state == LOST and fields.get("exit_code") is None:
        fields["exit_unknown"] = "the supervisor ended before the launcher (killed, or the machine went down), so the exit code was not recorded"
    if state == STALLED:
        fields["stalled_s"] = round(run.stalled_for(status) or 0.0, 1)
    return fields
