"""The peak-VRAM estimator: what one training rank needs, from measured parameter and activation sizes.

Imports without torch (the TUI uses it). See docs/memory.md for the formula and the figures.
"""

from __future__ import annotations

from .calibration import CALIBRATION_KEYS, record_calibration
from .estimator import BREAKDOWN_KEYS, Estimate, estimate
from .trainable import Trainable, trainable

__all__ = ["BREAKDOWN_KEYS", "CALIBRATION_KEYS", "Estimate", "Trainable", "estimate", "record_calibration", "trainable"]
