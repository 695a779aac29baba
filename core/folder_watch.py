"""Noticing that a live run folder was moved (``mv`` while it trains) and finding where it went.

A process that writes into a run folder keeps the folder open; when its path no longer names
that folder, the open handle says where the folder is now (Linux ``/proc/self/fd``), so the
process can write its last state there instead of crashing on the old path.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class FolderWatch:
    """An open handle on a folder; ``moved_to()`` is its new path after a move, else None."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        try:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            self._fd = None

    def moved_to(self) -> Path | None:
        """The folder's new path when it was moved or renamed since the last call (then that path is
        watched), None while it is where it was, was deleted, or cannot be found."""
        if self._fd is None:
            return None
        try:
            if os.path.samestat(os.stat(self.path), os.fstat(self._fd)):
                return None
        except FileNotFoundError:
            pass
        except OSError:
            return None
        try:
            target = os.readlink(f"/proc/self/fd/{self._fd}")
        except OSError:
            return None
        if target.endswith(" (deleted)") or not os.path.isdir(target):
            return None
        self.path = Path(target)
        return self.path

    def close(self) -> None:
        """Let go of the folder."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def moved_sentence(new_path: Path) -> str:
    """What a run that stopped because its folder was moved says (one sentence with the fix)."""
    return f"the run folder was moved to {new_path} while it trained, so it saved and stopped; resume it there with: sdtui resume {new_path}"


def again_if_moved(action: Callable[[], T], follow: Callable[[], bool] | None) -> T:
    """``action()``; when it finds no file or folder because the run folder was moved in the middle
    of it, ``follow()`` the move (True when it found one) and do it once more at the new path."""
    try:
        return action()
    except FileNotFoundError:
        if follow is None or not follow():
            raise
    return action()


def weak_follower(method: Callable[[], bool]) -> Callable[[], bool]:
    """``method`` (a bound move follower) called through a weak reference, so the objects it is
    handed to do not keep its owner alive: a trainer that goes away lets go of its folder lock
    at once, not at the next garbage collection. False once the owner is gone."""
    ref = weakref.WeakMethod(method)

    def follow() -> bool:
        bound = ref()
        return bool(bound is not None and bound())

    return follow
