"""control.json: the requests to a run's trainer, and how the trainer acknowledges them.

The format, written by the CLI and the TUI (``append_request``) and read by the trainer's rank 0
at step boundaries (``ControlReader``) and by the supervisor (``stop_requested``)::

    {"requests": [{"id": "a1b2c3d4e5f6", "action": "stop", "at": 1763740000.0, "attempt": "…"}, …]}

``attempt`` is the attempt id of the run when the request was made (status.json's
``attempt_id``): a trainer takes only its own attempt's requests (or, without an id, those made
since its attempt started), so a stop left over from an earlier attempt never stops a resumed
run. Each request is executed once; the trainer acknowledges it in status.json with
``control_ack: {"id", "action", "at"}`` (the last request of a poll) and lists the executed ids
in ``control_done``. control.json holding any bytes (junk, half-written) reads as no requests,
and the next request replaces it with a valid file.
"""

from __future__ import annotations

import fcntl
import os
import time
import uuid
from pathlib import Path
from typing import Any

from core.atomic import write_json_atomic
from core.errors import UserError
from core.runs.readers import load_json_object, number

ACTIONS = ("stop", "save", "sample", "pause", "resume")
#: Requests kept in control.json (older ones were executed long ago).
KEEP = 100
#: Executed request ids the trainer remembers in status.json's ``control_done``.
DONE_KEPT = 200


def read_requests(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The request objects in control.json, in file order ([] when missing or damaged)."""
    data, _ = load_json_object(path)
    requests = data.get("requests") if isinstance(data.get("requests"), list) else []
    return [r for r in requests if isinstance(r, dict)]


def belongs(request: dict[str, Any], attempt: str, since: float) -> bool:
    """A control request belongs to the attempt whose id it carries; one without an id to whatever
    attempt ran when it was made (at or after ``since``). A stale request never reaches a resumed run."""
    if request.get("attempt"):
        return bool(attempt) and request["attempt"] == attempt
    return (number(request.get("at")) or 0.0) >= since


def append_request(path: str | os.PathLike[str], action: str, attempt: str = "") -> str:
    """Append a request for ``action`` of attempt ``attempt`` to control.json at ``path`` (under a
    lock beside it, written atomically, the last ``KEEP`` kept); return its id."""
    if action not in ACTIONS:
        raise UserError(f"unknown control action '{action}'; use one of {', '.join(ACTIONS)}")
    path = Path(path)
    rid = uuid.uuid4().hex[:12]
    entry: dict[str, Any] = {"id": rid, "action": action, "at": round(time.time(), 3)}
    if attempt:
        entry["attempt"] = attempt
    with open(path.parent / ".control.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        requests = read_requests(path)[-(KEEP - 1) :]
        requests.append(entry)
        write_json_atomic(path, {"requests": requests})
    return rid


def stop_requested(path: str | os.PathLike[str], attempt: str, since: float) -> bool:
    """True when control.json holds a stop request of this attempt (or, without an attempt id, made at or after ``since``)."""
    return any(r.get("action") == "stop" and belongs(r, attempt, since) for r in read_requests(path))


def acknowledged(status: dict[str, Any], rid: str) -> bool:
    """True when status.json acknowledges request ``rid`` (``control_ack`` or ``control_done``)."""
    ack = status.get("control_ack")
    if isinstance(ack, dict) and ack.get("id") == rid:
        return True
    done = status.get("control_done")
    return isinstance(done, list) and rid in done


class ControlReader:
    """Finds the requests in control.json that were not executed yet, and acknowledges executed ones."""

    def __init__(self, path: str | os.PathLike[str], done: list[str] | None = None, attempt: str = "", since: float = 0.0) -> None:
        self.path = Path(path)
        self.done: list[str] = [str(d) for d in (done if isinstance(done, list) else [])]
        self.attempt = attempt
        self.since = since

    def pending(self) -> list[dict[str, Any]]:
        """New, valid requests of this attempt in file order (unknown actions and other attempts' requests are ignored)."""
        found = []
        for request in read_requests(self.path):
            if not belongs(request, self.attempt, self.since):
                continue
            rid, action = request.get("id"), request.get("action")
            if isinstance(rid, str) and rid and action in ACTIONS and rid not in self.done:
                found.append(request)
        return found

    def mark_done(self, request: dict[str, Any]) -> None:
        """Remember an executed request (the last ``DONE_KEPT`` ids are kept)."""
        self.done = (self.done + [str(request["id"])])[-DONE_KEPT:]

    def acknowledge(self, requests: list[dict[str, Any]], at: float) -> dict[str, Any]:
        """Mark ``requests`` executed; the status.json fields that acknowledge them ({} for none)."""
        for request in requests:
            self.mark_done(request)
        if not requests:
            return {}
        last = requests[-1]
        return {"control_ack": {"id": last["id"], "action": last["action"], "at": at}, "control_done": self.done}
