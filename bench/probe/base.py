"""What one probe check is."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Check:
    """One fault and how to try it.

    ``run`` gets an empty scratch folder of its own and returns ``None`` when the fault is held,
    else one sentence saying what went wrong. ``slow`` marks a check that trains, launches
    processes or builds large trees (tests/test_probe.py marks it ``slow``).
    """

    name: str
    run: Callable[[Path], str | None]
    slow: bool = False
