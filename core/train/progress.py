"""Where a run stands: the one small mutable state the loop, the stepper and the saver share."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Progress:
    """Step, epoch and batch position of a run, and its totals (restored by a resume)."""

    total_steps: int = 0
    steps_per_epoch: int = 0
    step: int = 0
    #: Epochs completed (the index of the one in progress).
    epoch: int = 0
    #: The next micro-batch of the epoch in progress.
    batch_index: int = 0
    #: The 1-based epoch of the newest step, as metrics, status and the dashboard show it.
    epoch_number: int = 1
