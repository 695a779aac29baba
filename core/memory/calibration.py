"""Measured peaks that correct the estimate: calibration.json points, matched on the key settings.

Two files hold points: the one shipped beside this module (read-only, part of the package) and
the user's, ``<user data dir>/calibration.json`` (``$XDG_DATA_HOME/sdtui`` on Linux), where
:func:`record_calibration` writes. A user's point overrides a shipped point of the same setup.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core import userdirs
from core.atomic import write_json_atomic
from core.settings import SETTINGS, resolve

from . import data

#: The settings a calibration point records; a point matches only when all of them are equal
#: (a key a point does not record counts as its default, so older points keep matching).
CALIBRATION_KEYS = (
    "mixed_precision",
    "full_bf16",
    "gradient_checkpointing",
    "optimizer",
    "fused_backward_pass",
    "cache_latents",
    "cache_text_encoder_outputs",
    "train_text_encoder",
    "batch_size",
    "resolution",
    "lora_rank",
    "lora_targets",
    "lora_type",
    "attention",
    "ema",
)


def user_calibration_path() -> Path:
    """The user's calibration file (it may not exist yet)."""
    return userdirs.data_dir() / "calibration.json"


def calibration_points(path: Path | None = None) -> list[dict[str, Any]]:
    """The points of ``path``; without it the user's, then the shipped ones (so the user's win)."""
    if path is not None:
        return data.calibration(path)
    return data.calibration(user_calibration_path()) + data.calibration(data.CALIBRATION_JSON)


def match_point(family: str, method: str, settings: dict[str, Any], num_gpus: int, backend: str, path: Path | None = None) -> dict[str, Any] | None:
    """The calibration point measured with exactly this setup (the user's before the shipped), or None."""
    for point in calibration_points(path):
        if (point.get("family"), point.get("method"), point.get("num_gpus", 1), point.get("backend", "ddp")) != (family, method, num_gpus, backend):
            continue
        recorded = point.get("settings", {})
        if all(recorded.get(key, SETTINGS[key].default) == settings.get(key, SETTINGS[key].default) for key in CALIBRATION_KEYS) and "measured_peak_bytes" in point:
            return point
    return None


def record_calibration(
    family: str,
    method: str,
    settings: dict[str, Any],
    measured_peak_bytes: int,
    num_gpus: int = 1,
    backend: str = "ddp",
    source: str = "",
    path: Path | None = None,
) -> dict[str, Any]:
    """Add (or replace) the measured peak of one setup in the user's calibration file (or ``path``),
    atomically; return the point. The shipped calibration.json is never written.

    ``measured_peak_bytes`` is what the GPU really held at the peak (torch.cuda.max_memory_reserved
    plus the CUDA context, or nvidia-smi's figure), ``source`` says which GPU and how.
    """
    target = path or user_calibration_path()
    resolved = resolve("settings", settings)
    point = {
        "family": family,
        "method": method,
        "num_gpus": num_gpus,
        "backend": backend,
        "settings": {key: resolved[key] for key in CALIBRATION_KEYS},
        "measured_peak_bytes": int(measured_peak_bytes),
        "source": source,
    }
    same = ("family", "method", "num_gpus", "backend", "settings")
    kept = [p for p in data.calibration(target) if any(p.get(k) != point[k] for k in same)]
    write_json_atomic(target, {"points": kept + [point]})
    return point
