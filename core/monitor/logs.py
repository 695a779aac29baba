"""Following train.log: the last lines at open, then only what was appended."""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path

#: How far from the end the first poll reads to find the last lines.
_START_WINDOW = 256 * 1024


class LogTail:
    """``poll()`` returns new complete lines; the first poll returns the last ``lines`` lines only.

    ``recent`` holds the last ``lines`` lines seen. A replaced or truncated log starts over
    (``reset`` set). Undecodable bytes are replaced, never fatal.
    """

    def __init__(self, path: str | os.PathLike[str], lines: int = 200) -> None:
        self.path = Path(path)
        self.lines = lines
        self.recent: deque[str] = deque(maxlen=lines)
        self.offset: int | None = None
        self.reset = False
        self._inode: tuple[int, int] | None = None
        self._partial = b""

    def poll(self) -> list[str]:
        """Lines appended since the last poll (complete lines only)."""
        self.reset = False
        try:
            handle = open(self.path, "rb")
        except FileNotFoundError:
            return []
        with handle:
            stat = os.fstat(handle.fileno())
            identity = (stat.st_dev, stat.st_ino)
            if self.offset is not None and (identity != self._inode or stat.st_size < self.offset):
                self.offset, self._partial, self.reset = 0, b"", True
                self.recent.clear()
            self._inode = identity
            first = self.offset is None
            start = max(0, stat.st_size - _START_WINDOW) if first else self.offset
            handle.seek(start)
            data = handle.read()
        self.offset = start + len(data)
        if first and start > 0:
            data = data.split(b"\n", 1)[1] if b"\n" in data else b""
        data = self._partial + data
        end = data.rfind(b"\n")
        if end < 0:
            self._partial = data
            return []
        self._partial = data[end + 1 :]
        new = data[:end].decode("utf-8", errors="replace").replace("\r", "\n").split("\n")
        new = [line for line in new if line.strip()]
        if first:
            new = new[-self.lines :]
        self.recent.extend(new)
        return new
