"""The checkpoint folders of a run's ``checkpoints/``: which are complete, the newest, which the user asked for.

Torch-free: the run listing, the launcher and the trainer's resume all find checkpoints here;
``core/train/outputs/train_state.py`` writes and loads what a folder holds. A folder named ``step-N``
with a ``state.json`` of step N is complete (it is renamed into place only once written); unfinished
``.tmp-step-N`` folders are never listed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

_NAME = re.compile(r"^step-(\d+)$")


def read_state(path: Path) -> dict[str, Any]:
    """A checkpoint folder's ``state.json`` ({} when missing or damaged)."""
    try:
        state = json.loads((path / "state.json").read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    return state if isinstance(state, dict) else {}


def _is_complete(folder: Path, step: int) -> bool:
    """True when ``folder`` holds a state.json of step ``step``, or one too damaged to tell (then
    loading it names the folder); a folder planted or renamed by hand says another step or none."""
    try:
        state = json.loads((folder / "state.json").read_bytes().decode("utf-8"))
    except OSError:
        return False
    except (ValueError, RecursionError):
        return True
    return isinstance(state, dict) and state.get("step") == step


def checkpoints(folder: str | os.PathLike[str]) -> list[Path]:
    """Complete checkpoint folders, oldest first (``_is_complete``)."""
    root = Path(folder)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _NAME.match(child.name)
        if match and child.is_dir() and _is_complete(child, int(match.group(1))):
            found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


def remove_unfinished(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the ``.tmp-step-N`` folders a killed save left behind (only the trainer that owns the
    run folder calls this, before its first save); return what was deleted."""
    root = Path(folder)
    gone = [child for child in root.glob(".tmp-step-*") if child.is_dir()] if root.is_dir() else []
    for child in gone:
        shutil.rmtree(child, ignore_errors=True)
    return gone


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
    return bool(read_state(path).get("manual"))
