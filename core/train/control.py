"""control.json: requests to the running trainer, read by rank 0 at step boundaries.

Format (written by the CLI/TUI through core.launch.control)::

    {"requests": [{"id": "a1b2", "action": "stop", "at": 1763740000.0}, ...]}

Each request is executed once; the trainer acknowledges it in status.json with
``control_ack: {"id", "action", "at"}`` and remembers executed ids in ``control_done``, so a
restarted (resumed) run does not execute them again.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from core.atomic import read_json

ACTIONS = ("stop", "save", "sample", "pause", "resume")
class ControlReader:
    """Finds the requests in control.json that were not executed yet."""

    def __init__(self, path: str | os.PathLike[str], done: list[str] | None = None) -> None:
        self.path = Path(path)
        self.done: list[str] = list(done or [])

    def pending(self) -> list[dict[str, Any]]:
        """New, valid requests in file order (unknown actions are ignored)."""
        data = read_json(self.path, {})
        requests = data.get("requests", []) if isinstance(data, dict) else []
        found = []
        for request in requests:
            if not isinstance(request, dict):
                continue
            rid, action = str(request.get("id", "")), request.get("action")
            if rid and action in ACTIONS and rid not in self.done:
                found.append(request)
        return found

    def mark_done(self, request: dict[str, Any]) -> None:
        """Remember an executed request (the last 200 ids are kept)."""
        self.done = (self.done + [str(request["id"])])[-200:]
