"""Problems a dataset scan finds: severity, the path, what is wrong and how to fix it."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

SEVERITIES = ("error", "warning", "info")
#: More problems than this with the same severity, message and fix become one grouped problem.
GROUP_OVER = 3
#: A grouped problem names this many of its paths as examples.
EXAMPLES = 3
#: The CLI's text and the TUI list at most this many problems, then say how many more there are.
LISTED = 40


@dataclass(frozen=True)
class Problem:
    """One finding. ``error`` leaves a file or folder out (it blocks training only when nothing usable
    is left: ``DatasetScan.blocking_problem``), ``warning`` deserves a look, ``info`` is a note.

    A grouped problem (``count`` > 1) stands for ``count`` paths with the same finding: ``path`` is
    the folder they share and ``examples`` names a few of them.
    """

    severity: str
    path: str
    message: str
    fix: str
    count: int = 1
    examples: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The problem as a JSON-able dict (``count`` and ``examples`` only for a grouped one)."""
        data: dict[str, Any] = {"severity": self.severity, "path": self.path, "message": self.message, "fix": self.fix}
        if self.count > 1:
            data |= {"count": self.count, "examples": list(self.examples)}
        return data

    def __str__(self) -> str:
        return f"{self.severity}: {self.path}: {self.message} — {self.fix}"


def sort_problems(problems: list[Problem]) -> list[Problem]:
    """Errors first, then warnings, then notes; by path within a severity (stable otherwise)."""
    return sorted(problems, key=lambda p: (SEVERITIES.index(p.severity), p.path))


def group_problems(problems: Iterable[Problem]) -> list[Problem]:
    """The problems with every kind found more than ``GROUP_OVER`` times folded into one.

    10,000 empty files read "10,000 files: the file is empty (0 bytes); it is left out (e.g. a.png,
    b.png, c.png)" instead of 10,000 lines; kinds found a few times keep one problem per path.
    """
    kinds: dict[tuple[str, str, str], list[Problem]] = {}
    for problem in problems:
        kinds.setdefault((problem.severity, problem.message, problem.fix), []).append(problem)
    result: list[Problem] = []
    for (severity, message, fix), found in kinds.items():
        if len(found) <= GROUP_OVER:
            result.extend(found)
            continue
        paths = sorted(p.path for p in found)
        count = sum(p.count for p in found)
        names = ", ".join(os.path.basename(p) for p in paths[:EXAMPLES])
        result.append(
            Problem(
                severity,
                os.path.commonpath(paths),
                f"{count:,} files: {message} (e.g. {names})",
                fix,
                count,
                tuple(paths[:EXAMPLES]),
            )
        )
    return result


def listed(problems: list[Problem]) -> tuple[list[Problem], str | None]:
    """The problems a person is shown (at most ``LISTED``) and a line for the rest, or None."""
    if len(problems) <= LISTED:
        return problems, None
    rest = problems[LISTED:]
    files = sum(p.count for p in rest)
    return problems[:LISTED], f"… and {len(rest):,} more problems ({files:,} files); sdtui scan DIR --json lists them all"
