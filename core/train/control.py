"""control.json: requests to the running trainer, read by rank 0 at step boundaries.

Format (written by the CLI/TUI through core.launch.control)::

    {"requests": [{"id": "a1b2", "action": "stop", "at": 1763740000.0}, ...]}

Each request carries the id of the attempt it was made for (``"attempt"``); a trainer takes
only its own attempt's requests (or, without an id, those made since its attempt started), so a
stop left over from an earlier attempt never stops a resumed run. Each request is executed once;
the trainer acknowledges it in status.json with ``control_ack: {"id", "action", "at"}`` and
remembers executed ids in ``control_done``. control.json holding any bytes (junk, half-written)
reads as no requests.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from core.runfiles import belongs, load_json_object

from .status import now

ACTIONS = ("stop", "save", "sample", "pause", "resume")
#: Seconds between control.json polls while paused.
PAUSE_POLL_S = 0.5


class ControlReader:
    """Finds the requests in control.json that were not executed yet."""

    def __init__(self, path: str | os.PathLike[str], done: list[str] | None = None, attempt: str = "", since: float = 0.0) -> None:
        self.path = Path(path)
        self.done: list[str] = [str(d) for d in (done if isinstance(done, list) else [])]
        self.attempt = attempt
        self.since = since

    def pending(self) -> list[dict[str, Any]]:
        """New, valid requests of this attempt in file order (unknown actions and other attempts' requests are ignored)."""
        data, _ = load_json_object(self.path)
        requests = data.get("requests") if isinstance(data.get("requests"), list) else []
        found = []
        for request in requests:
            if not isinstance(request, dict) or not belongs(request, self.attempt, self.since):
                continue
            rid, action = request.get("id"), request.get("action")
            if isinstance(rid, str) and rid and action in ACTIONS and rid not in self.done:
                found.append(request)
        return found

    def mark_done(self, request: dict[str, Any]) -> None:
        """Remember an executed request (the last 200 ids are kept)."""
        self.done = (self.done + [str(request["id"])])[-200:]


class ControlHandling:
    """The ``Trainer``'s side of control.json: poll at step boundaries, agree across ranks, execute."""

    def _agree(self, actions: list[str]) -> list[str]:
        """Every rank's view of the actions: rank 0's requests plus any rank's stop signal."""
        import torch

        vector = torch.tensor([1 if a in actions else 0 for a in ACTIONS], dtype=torch.int64, device=self.device)
        if self.world > 1:
            vector = self.acc.reduce(vector, "sum")
        return [a for a, n in zip(ACTIONS, vector.tolist()) if n > 0]

    def _poll(self) -> tuple[list[str], list[dict[str, Any]]]:
        requests = self.control.pending() if self.acc.is_main_process else []
        actions = [r["action"] for r in requests]
        if self.stop_signal:
            actions.append("stop")
        return self._agree(actions), requests

    def _ack(self, requests: list[dict[str, Any]]) -> None:
        for request in requests:
            self.control.mark_done(request)
        if requests:
            last = requests[-1]
            self.status.update(control_ack={"id": last["id"], "action": last["action"], "at": now()}, control_done=self.control.done)

    def _handle_control(self, pending: list) -> str | None:
        """Execute the control requests at a step boundary; ``"stopped"`` ends the run."""
        actions, requests = self._poll()
        if not actions:
            return None
        self._flush(pending)
        if "pause" in actions and "resume" not in actions and "stop" not in actions:
            self._execute(actions, requests)
            self.status.update(state="paused", step=self.step)
            self.metrics.event(f"paused at step {self.step}")
            while "resume" not in actions and "stop" not in actions:
                time.sleep(PAUSE_POLL_S)
                actions, requests = self._poll()
                if actions:
                    self._execute(actions, requests)
            if "resume" in actions and "stop" not in actions:
                self.status.update(state="running")
                self.metrics.event(f"resumed at step {self.step}")
            return "stopped" if "stop" in actions else None
        return "stopped" if self._execute(actions, requests) else None

    def _execute(self, actions: list[str], requests: list[dict[str, Any]]) -> bool:
        """Save / sample / stop as asked (every rank takes part), acknowledge; True when stopped."""
        if "save" in actions and "stop" not in actions:
            self.save(manual=True)
        if "sample" in actions:
            self.sample()
        self._ack(requests)
        if "stop" in actions:
            self.metrics.event(f"stop requested; saving at step {self.step}")
            self.save(final=True)
            self.status.update(state="stopped", step=self.step, epoch=self.epoch_number, ended_at=now())
            self.metrics.end("stopped", step=self.step)
            return True
        return False
