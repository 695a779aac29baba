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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.runs.readers import belongs, load_json_object

from core.train.status import now

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


@dataclass
class Polled:
    """The actions every rank agreed on at a step boundary, and rank 0's requests behind them."""

    actions: list[str] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)


class ControlPoller:
    """Polls control.json at step boundaries (rank 0) and agrees the actions across ranks;
    the loop carries them out and acknowledges them with :meth:`ack`."""

    def __init__(self, reader: ControlReader, acc: Any, status: Any) -> None:
        self.reader = reader
        self.acc = acc
        self.status = status

    def poll(self, signalled: bool = False) -> Polled:
        """Rank 0's new requests plus a stop when any rank was ``signalled`` (SIGTERM), as every rank sees them."""
        requests = self.reader.pending() if self.acc.is_main_process else []
        actions = [r["action"] for r in requests]
        if signalled:
            actions.append("stop")
        return Polled(self._agree(actions), requests)

    def _agree(self, actions: list[str]) -> list[str]:
        import torch

        vector = torch.tensor([1 if a in actions else 0 for a in ACTIONS], dtype=torch.int64, device=self.acc.device)
        if self.acc.num_processes > 1:
            vector = self.acc.reduce(vector, "sum")
        return [a for a, n in zip(ACTIONS, vector.tolist()) if n > 0]

    def ack(self, requests: list[dict[str, Any]]) -> None:
        """Record the executed requests (status.json ``control_ack`` and ``control_done``)."""
        for request in requests:
            self.reader.mark_done(request)
        if requests:
            last = requests[-1]
            self.status.update(control_ack={"id": last["id"], "action": last["action"], "at": now()}, control_done=self.reader.done)
