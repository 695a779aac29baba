"""The measured figures the estimator reads: parameter counts, activation fits, calibration points."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PARAMS_JSON = HERE / "params.json"
ACTIVATIONS_JSON = HERE / "activations.json"
CALIBRATION_JSON = HERE / "calibration.json"


@cache
def params() -> dict[str, Any]:
    """Per family and component: parameter counts, LoRA widths, Adafactor state size (bench/measure_params.py)."""
    families: dict[str, Any] = json.loads(PARAMS_JSON.read_text(encoding="utf-8"))["families"]
    return families


def sized(family: str, variant: str = "") -> str:
    """The key of ``family``'s tables for ``variant``: the variant's own where it was measured (a variant of
    another size: FLUX.2 klein 9B, dev), else the family's."""
    return variant if variant and variant in params() else family


@cache
def activations() -> dict[str, Any]:
    """Per family: fitted activation bytes per image, and the text encoders' (bench/measure_activations.py)."""
    table: dict[str, Any] = json.loads(ACTIVATIONS_JSON.read_text(encoding="utf-8"))
    return table


def calibration(path: Path | None = None) -> list[dict[str, Any]]:
    """Measured peaks (``points``) from a calibration file (default: the shipped one); an absent or
    broken file means none."""
    try:
        doc = json.loads((path or CALIBRATION_JSON).read_bytes())
    except (OSError, ValueError):
        return []
    points = doc.get("points") if isinstance(doc, dict) else None
    return [p for p in points if isinstance(p, dict)] if isinstance(points, list) else []
