"""Measured peaks that correct the estimate: calibration.json points, matched on the key settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.atomic import read_json, write_json_atomic

from . import data

#: The settings a calibration point records; a point matches only when all of them are equal.
CALIBRATION_KEYS = (
    "mixed_precision", "full_bf16", "gradient_checkpointing", "optimizer", "fused_backward_pass",
    "cache_latents", "cache_text_encoder_outputs", "train_text_encoder", "batch_size", "resolution",
    "lora_rank", "lora_targets", "attention", "ema",
)


def match_point(family: str, method: str, settings: dict[str, Any], num_gpus: int, backend: str, path: Path | None = None) -> dict[str, Any] | None:
    """The calibration point measured with exactly this setup, or None."""
    for point in data.calibration(path):
        if (point.get("family"), point.get("method"), point.get("num_gpus", 1), point.get("backend", "ddp")) != (family, method, num_gpus, backend):
            continue
        recorded = point.get("settings", {})
        if all(recorded.get(key) == settings.get(key) for key in CALIBRATION_KEYS) and "measured_peak_bytes" in point:
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
    """Add (or replace) the measured peak of one setup in calibration.json, atomically; return the point.

    ``measured_peak_bytes`` is what the GPU really held at the peak (torch.cuda.max_memory_reserved
    plus the CUDA context, or nvidia-smi's figure), ``source`` says which GPU and how.
    """
    from .estimator import resolve_settings

    target = path or data.CALIBRATION_JSON
    resolved = resolve_settings(settings)
    point = {
        "family": family,
        "method": method,
        "num_gpus": num_gpus,
        "backend": backend,
        "settings": {key: resolved[key] for key in CALIBRATION_KEYS},
        "measured_peak_bytes": int(measured_peak_bytes),
        "source": source,
    }
    doc = read_json(target, default=None) or {"points": []}
    same = ("family", "method", "num_gpus", "backend", "settings")
    doc["points"] = [p for p in doc.get("points", []) if any(p.get(k) != point[k] for k in same)] + [point]
    write_json_atomic(target, doc)
    return point
