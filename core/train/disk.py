"""Free space before the trainer's big writes, the sentence for a full disk, and a small reserve.

Each checkpoint and output write is checked against its known size first; a write that still
hits ENOSPC (another process filled the disk meanwhile) ends the same way. The reserve is a small
file made at start-up and deleted when the disk is full, so the final status.json, the last
metrics and log lines can still be written.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from core.train.status import TrainingFailed
from core.units import size

#: Room kept beyond a write's own size (status.json, metrics and log lines, file-system slack).
MARGIN_BYTES = 1024 * 1024
#: The reserve file's size.
RESERVE_BYTES = 1024 * 1024


class DiskFull(TrainingFailed):
    """The disk holding the run folder has no room for a checkpoint or an output."""

    def __init__(self, run_dir: Path, free: int, needed: int, what: str) -> None:
        name = Path(run_dir).name
        super().__init__(
            f"the disk holding {run_dir} is full ({size(free)} free, {what} needs {size(needed)} plus {size(MARGIN_BYTES)} kept free "
            f"for the final status and log lines); free space and `sdtui resume {name}`",
            f"free space on that disk, then sdtui resume {name} continues from the newest checkpoint",
        )


def free_bytes(folder: Path) -> int:
    """Free bytes for this user on the disk holding ``folder`` (its nearest existing parent)."""
    path = Path(folder)
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def ensure_space(run_dir: Path, folder: Path, needed: int, what: str) -> None:
    """DiskFull when the disk holding ``folder`` has less than ``needed`` bytes plus the margin free."""
    free = free_bytes(folder)
    if free < needed + MARGIN_BYTES:
        raise DiskFull(run_dir, free, needed, what)


def is_disk_full(exc: BaseException) -> bool:
    """True for an ENOSPC/EDQUOT error, also when a library (safetensors, torch) wraps it in its own exception."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    return "No space left on device" in text or "Disk quota exceeded" in text


class Reserve:
    """A small file in the run folder that is given up when the disk is full."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def make(self) -> None:
        """Write the reserve (best effort: on a full disk there is nothing to reserve)."""
        try:
            with open(self.path, "wb") as handle:
                handle.write(b"\0" * RESERVE_BYTES)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError:
            self.release()

    def release(self) -> None:
        """Delete the reserve, giving its room to the final writes."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
