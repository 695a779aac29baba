"""Control of a run from any terminal: requests to the trainer through control.json, and stop.

control.json is ``{"requests": [{"id", "action", "at", "attempt"}, …]}``; ``attempt`` is the
attempt id of the run when the request was made (status.json's ``attempt_id``), so a request
never reaches a later attempt. The trainer executes each id once and acknowledges it with
``control_ack: {"id", "action", "at"}`` in status.json.
"""

from __future__ import annotations

import fcntl
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core import procs
from core.atomic import write_json_atomic
from core.errors import UserError
from core.runs.readers import load_json_object
from core.runs.rundir import ENDED_STATES, FINAL_STATES, LOST, STALLED, RunDir, has_state

ACTIONS = ("stop", "save", "sample", "pause", "resume")
#: Requests kept in control.json (older ones were executed long ago).
_KEEP = 100
#: Seconds the processes left after the trainer saved and stopped get to end on SIGTERM.
_LEFTOVER_GRACE_S = 5.0


def request(run: RunDir, action: str) -> str:
    """Append a request for the trainer to control.json; return its id."""
    if action not in ACTIONS:
        raise UserError(f"unknown control action '{action}'; use one of {', '.join(ACTIONS)}")
    rid = uuid.uuid4().hex[:12]
    attempt = run.read_status().get("attempt_id")
    entry: dict[str, Any] = {"id": rid, "action": action, "at": round(time.time(), 3)}
    if isinstance(attempt, str) and attempt:
        entry["attempt"] = attempt
    lock = run.path / ".control.lock"
    with open(lock, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        data, _ = load_json_object(run.control_json)
        requests = data.get("requests") if isinstance(data.get("requests"), list) else []
        requests = [r for r in requests if isinstance(r, dict)][-(_KEEP - 1):]
        requests.append(entry)
        write_json_atomic(run.control_json, {"requests": requests})
    return rid


def acknowledged(run: RunDir, rid: str) -> bool:
    """True once the trainer has acknowledged request ``rid``.

    ``control_ack`` holds the last request of a poll; earlier requests of the same poll are
    listed in ``control_done``.
    """
    status = run.read_status()
    ack = status.get("control_ack")
    if isinstance(ack, dict) and ack.get("id") == rid:
        return True
    done = status.get("control_done")
    return isinstance(done, list) and rid in done


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
        return StopResult(end_state, bool(rid) and acknowledged(run, rid) or saved, signalled)


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
