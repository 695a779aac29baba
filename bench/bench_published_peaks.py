"""Our peak-VRAM estimate beside published peaks (bench/published_peaks.json).

``python -m bench published_peaks`` prints one line per figure: the published peak, ours, and
``ratio=`` ours / published (1.00 is exact; the target is 0.80-1.20), ours being the same peak
the source read (a source's ``peak``: nvidia-smi, max_memory_reserved or max_memory_allocated). Published "fits in N GB"
claims are bounds: ``ratio=`` then is ours / N and ``ok`` means ours is on the claimed side.
No torch, no GPU: the estimator is pure Python.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.memory import estimate

DATA = Path(__file__).resolve().parent / "published_peaks.json"
#: How far an estimate may be from a measured peak.
TOLERANCE = 0.20


@dataclass(frozen=True)
class Comparison:
    """One published figure and our estimate of the same setup (GiB)."""

    id: str
    source: str
    published_gib: float
    ours_gib: float
    kind: str  # measured | at most | above
    phase: str

    @property
    def ratio(self) -> float:
        """Ours over the published figure."""
        return self.ours_gib / self.published_gib

    @property
    def ok(self) -> bool:
        """Within ±20 % of a measured peak; on the claimed side of a bound."""
        if self.kind == "measured":
            return abs(self.ratio - 1) <= TOLERANCE
        return self.ours_gib <= self.published_gib if self.kind == "at most" else self.ours_gib > self.published_gib


#: What a source read, and the part of our estimate that is the same peak: nvidia-smi shows the
#: whole process (tensors, the allocator's slack, the CUDA context); torch's
#: max_memory_reserved the allocator's pool; max_memory_allocated the tensors alone.
PEAKS = ("nvidia-smi", "max_memory_reserved", "max_memory_allocated")


def _ours(entry: dict[str, Any], common: dict[str, Any], peak: str = "nvidia-smi") -> tuple[float, str]:
    shared = dict(common)
    prior = bool(entry.get("prior_preservation", shared.pop("prior_preservation", False)))
    result = estimate(entry["family"], entry["method"], shared | entry["settings"], prior_preservation=prior)
    figure = {"nvidia-smi": result.total_bytes, "max_memory_reserved": result.reserved_bytes, "max_memory_allocated": result.allocated_bytes}[peak]
    return figure / 2**30, result.phase


def _peak(source: dict[str, Any]) -> str:
    """Which peak a source read (its ``peak``; nvidia-smi when it does not say)."""
    peak = str(source.get("peak", "nvidia-smi"))
    if peak not in PEAKS:
        raise ValueError(f"published_peaks.json: peak '{peak}' is not one of {', '.join(PEAKS)}")
    return peak


def compare(path: Path = DATA) -> list[Comparison]:
    """Every published figure of ``path`` with our estimate."""
    data = json.loads(path.read_text(encoding="utf-8"))
    rows = []
    for entry in data["measured"]:
        ours, phase = _ours(entry, data["common"].get(entry["source"], {}), _peak(data["sources"].get(entry["source"], {})))
        rows.append(Comparison(entry["id"], entry["source"], entry["peak_gib"], ours, "measured", phase))
    for entry in data["bounds"]:
        ours, phase = _ours(entry, {})
        kind, figure = ("at most", entry["at_most_gib"]) if "at_most_gib" in entry else ("above", entry["above_gib"])
        rows.append(Comparison(entry["id"], entry["source"], figure, ours, kind, phase))
    return rows


def main() -> list[str]:
    """The benchmark's result lines."""
    lines = []
    for row in compare():
        verdict = "within ±20%" if row.kind == "measured" and row.ok else "OFF by more than 20%" if row.kind == "measured" else "ok" if row.ok else "DISAGREES"
        lines.append(f"peak_{row.id}: published {row.kind} {row.published_gib:.2f} GiB ({row.source}) vs ours {row.ours_gib:.2f} GiB (peak in {row.phase}); {verdict} ratio={row.ratio:.2f}")
    return lines


if __name__ == "__main__":
    for line in main():
        print(line)
