"""Problems a dataset scan finds: severity, the path, what is wrong and how to fix it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

SEVERITIES = ("error", "warning", "info")


@dataclass(frozen=True)
class Problem:
    """One finding. ``error`` leaves a file or folder out (it blocks training only when nothing usable
    is left: ``DatasetScan.blocking_problem``), ``warning`` deserves a look, ``info`` is a note."""

    severity: str
    path: str
    message: str
    fix: str

    def to_json(self) -> dict[str, Any]:
        """The problem as a JSON-able dict."""
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.severity}: {self.path}: {self.message} — {self.fix}"


def sort_problems(problems: list[Problem]) -> list[Problem]:
    """Errors first, then warnings, then notes; by path within a severity (stable otherwise)."""
    return sorted(problems, key=lambda p: (SEVERITIES.index(p.severity), p.path))
