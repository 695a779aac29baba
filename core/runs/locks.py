"""The run folder's locks (fcntl): taking one, writing the holder's process record into it, and
asking from another process whether it is held and by whom."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import IO, Any

from core.runs.readers import load_json_object, number


def lock(path: Path) -> IO[str] | None:
    """Take an exclusive lock (fcntl) on ``path``; None when another process holds it."""
    handle = open(path, "a+")  # noqa: SIM115 - held by the caller for as long as it owns the folder
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def hold(handle: IO[str], record: dict[str, Any]) -> None:
    """Write the holder's process record (pid, create time, role) into a held lock file."""
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps(record))
    handle.flush()


def lock_holders(*paths: Path) -> list[dict[str, Any]]:
    """The process records written into those of ``paths`` that are held (a run's supervisor and trainer locks)."""
    found = []
    for path in paths:
        if is_locked(path):
            record, _ = load_json_object(path)
            if isinstance(record.get("pid"), int) and number(record.get("create_time")) is not None:
                found.append(record)
    return found


def is_locked(path: Path) -> bool:
    """True while some process holds the lock on ``path`` (a missing file is not locked)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
