"""How sdtui writes memory sizes and measured numbers, everywhere (TUI, CLI, messages).

Memory is in GiB (2**30 bytes, what nvidia-smi's MiB and torch count in), always named
``GiB``; the JSON fields named ``…_gb`` (``vram_estimate_gb``, ``gpu.vram_gb``, an
estimate's ``gb``) hold GiB too.
"""

from __future__ import annotations

import math

GIB = 2**30


def gib(num_bytes: float | None, digits: int = 1) -> str:
    """``12.3 GiB`` (``?`` when unknown)."""
    if num_bytes is None:
        return "?"
    return f"{num_bytes / GIB:.{digits}f} GiB"


def size(num_bytes: float) -> str:
    """A file or disk size in the binary unit that shows it with three significant digits or
    more: ``512 B``, ``100.0 KiB``, ``1.1 MiB``, ``2.50 GiB`` (never ``0.00 GiB`` for 100 KiB)."""
    value = float(num_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            break
        value /= 1024
    if unit == "B":
        return f"{int(value)} B"
    return f"{value:.2f} {unit}" if abs(value) < 10 else f"{value:.1f} {unit}"


def number(value: float | None, digits: int = 4) -> str:
    """A compact number: ``0.1234``, ``1.2e-04``; ``–`` when unknown (a loss is written this way everywhere)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if value == 0:
        return "0"
    if abs(value) < 10 ** -(digits - 1) or abs(value) >= 10**6:
        return f"{value:.1e}"
    return f"{value:.{digits}g}"


def duration(seconds: float | None) -> str:
    """A short duration: ``45s``, ``12m 05s``, ``3h 20m``, ``2d 4h`` (``–`` when unknown)."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "–"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"
