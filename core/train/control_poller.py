"""The trainer's side of control.json: rank 0 polls it at step boundaries and every rank agrees
on the actions; the format, its reader and the acknowledgement are ``core.runs.control_file``'s."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from core.runs.control_file import ACTIONS, ControlReader
from core.train.status import now

#: Seconds between control.json polls while paused.
PAUSE_POLL_S = 0.5


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
        fields = self.reader.acknowledge(requests, now())
        if fields:
            self.status.update(**fields)
