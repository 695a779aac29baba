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


@cache
def activations() -> dict[str, Any]:
    """Per family: fitted activation bytes per image, and the text encoders' (bench/measure_activations.py)."""
    table: dict[str, Any] = json.loads(ACTIVATIONS_JSON.read_text(encoding="utf-8"))
    return table


def calibration(path: Path | None = None) -> list[dict[str, Any]]:
    """Measured peaks (``points``) from a calibration file (default: the shipped one); an absent or
    broken file means none."""
    target = path or CALIBRATION_JSON
    try:
        stat = target.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        if target in _READ and _READ[target][0] == stamp:
            return list(_READ[target][1])
        doc = json.loads(target.read_bytes())
    except (OSError, ValueError):
        return []
    found = doc.get("points") if isinstance(doc, dict) else None
    points = [p for p in found if isinstance(p, dict)] if isinstance(found, list) else []
    _READ[target] = (stamp, points)
    return list(points)


#: Calibration files read, by path: (modification time and size, points). The picker estimates
#: hundreds of combinations a plan; a file changed on disk is read again.
_READ: dict[Path, tuple[tuple[int, int], list[dict[str, Any]]]] = {}
