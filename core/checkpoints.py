"""The checkpoint folders of a run's ``checkpoints/``: which are complete, the newest, which the user asked for.

Torch-free: the run listing, the launcher and the trainer's resume all find checkpoints here;
``core/train/checkpoint.py`` writes and loads what a folder holds. A folder named ``step-N``
with a ``state.json`` is complete (it is renamed into place only once written); unfinished
``.tmp-step-N`` folders are never listed.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

_NAME = re.compile(r"^step-(\d+)$")


def checkpoints(folder: str | os.PathLike[str]) -> list[Path]:
    """Complete checkpoint folders, oldest first."""
    root = Path(folder)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _NAME.match(child.name)
        if match and child.is_dir() and (child / "state.json").is_file():
            found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


def latest(folder: str | os.PathLike[str]) -> Path | None:
    """The newest complete checkpoint, or None."""
    found = checkpoints(folder)
    return found[-1] if found else None


def step_of(path: Path) -> int:
    """The optimizer step a checkpoint folder (``step-N``) was saved at."""
    match = _NAME.match(path.name)
    if match is None:
        raise ValueError(f"{path} is not a checkpoint folder (step-N)")
    return int(match.group(1))


def is_manual(path: Path) -> bool:
    """Whether a checkpoint was asked for by the user (kept out of the rotation)."""
    try:
        return bool(json.loads((path / "state.json").read_text(encoding="utf-8")).get("manual"))
    except (OSError, ValueError, AttributeError):
        return False
