"""A start-up phase of status.json (``phase``: label, done/total, ETA, time so far) as text."""

from __future__ import annotations

from typing import Any

from core.units import duration


def phase_text(phase: dict[str, Any]) -> str:
    """A start-up phase from status.json as the dashboard and ``sdtui status`` show it:
    ``caching latents 312/1000 images, 40s left, 1m 05s so far``. The time so far counts up every
    few seconds (the trainer's heartbeat), so a slow phase reads apart from a hung one."""
    text = str(phase.get("label") or phase.get("name") or "starting")
    done, total = phase.get("done"), phase.get("total")
    if isinstance(total, int) and total > 0 and isinstance(done, int):
        text += f" {done}/{total}" + (f" {phase['unit']}" if phase.get("unit") else "")
    eta = phase.get("eta_s")
    if isinstance(eta, (int, float)):
        text += f", {duration(eta)} left"
    if isinstance(phase.get("elapsed_s"), (int, float)):
        text += f", {duration(phase['elapsed_s'])} so far"
    return text
