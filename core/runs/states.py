"""The run states: what status.json records, the derived ``lost`` and ``stalled``, and how long a
live run may go without a step or heartbeat before it counts as stalled."""

from __future__ import annotations

from typing import Any

STATES = ("queued", "starting", "running", "paused", "stopping", "finished", "failed", "stopped")
FINAL_STATES = ("finished", "failed", "stopped")
#: A run whose processes all died without a final state (the machine went down, kill -9).
LOST = "lost"
#: A live run that has made no step and no heartbeat for too long (hung, or stopped with SIGSTOP).
STALLED = "stalled"
#: The states a run is shown in (``RunDir.state``): still going, or ended (no process of it is left).
LIVE_STATES = tuple(state for state in STATES if state not in FINAL_STATES) + (STALLED,)
ENDED_STATES = FINAL_STATES + (LOST,)
#: Stalled after this many usual step times without a step or heartbeat, and never sooner than
#: STALL_MIN_S; before the first step (model loading, caching) after STALL_START_S.
STALL_FACTOR = 10.0
STALL_MIN_S = 15.0
STALL_START_S = 300.0


def has_state(status: dict[str, Any]) -> bool:
    """True when status.json names one of the run states (else the state is rebuilt from the folder)."""
    return status.get("state") in STATES
