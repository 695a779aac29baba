"""Following train.log: the last lines at open, then only what was appended; and the user's view
of it without the libraries' known noise (train.log keeps every line that reaches it; the noise
some libraries log at import is dropped before it is written, :func:`quiet_library_loggers`)."""

from __future__ import annotations

import logging
import os
import re
from collections import deque
from collections.abc import Iterable
from pathlib import Path

#: Lines the libraries print on every run that say nothing about this run (the one list of them):
#: bitsandbytes' optional CPU kernels, torch.distributed's launcher notices, deprecation warnings
#: from inside installed packages and the source line Python echoes under a warning, torchao's
#: import on a CPU-only build.
NOISE = tuple(
    re.compile(pattern)
    for pattern in (
        r"Failed to load CPU gemm_4bit_forward",
        r"pip install kernels",
        r"master_addr is only used for static rdzv_backend",
        r"Setting OMP_NUM_THREADS environment variable for each process",
        r"^\s*\*{10,}\s*$",
        r"[/\\](?:site|dist)-packages[/\\].*: (?:Future|Deprecation|PendingDeprecation)Warning:",
        r"^\s+warnings\.warn\(",
        # torchao (which diffusers imports) on a CPU-only torch: its CUDA kernels do not load, no Triton
        r"Failed to load \S*torchao[/\\]_C\w*\S*\.so",
        r"Unable to import `torchao` Tensor objects",
        r"Detected no triton, on systems without Triton",
        # torch's pytree on torchao's enums: a deprecation aimed at torchao's authors
        r"is an Enum subclass and is now natively supported by torch\.compile",
    )
)
#: The loggers that log those lines when their library is imported: :func:`quiet_library_loggers`
#: drops them where they are logged, so they reach neither train.log nor a terminal.
NOISY_LOGGERS = ("torchao", "torchao.kernel.intmm", "torch.utils._pytree", "diffusers.quantizers.torchao.torchao_quantizer")
#: Exceptions of the launcher that only say "a child failed"; the cause is in the trainer's lines.
WRAPPERS = ("CalledProcessError", "ChildFailedError")


def is_noise(line: str) -> bool:
    """True for a line of known library noise (see ``NOISE``)."""
    return any(pattern.search(line) for pattern in NOISE)


class _NoiseFilter(logging.Filter):
    """Drops a log record whose message is known noise (``NOISE``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not is_noise(record.getMessage())


_FILTER = _NoiseFilter()


def quiet_library_loggers() -> None:
    """Drop the known noise where ``NOISY_LOGGERS`` log it (before the libraries are imported; a filter
    acts on the logger a record is logged on, so each is named). Calling it twice adds nothing."""
    for name in NOISY_LOGGERS:
        logging.getLogger(name).addFilter(_FILTER)


def user_view(lines: Iterable[str]) -> list[str]:
    """The lines a user reads: without known noise and without the launcher's own traceback that
    only wraps the trainer's failure (the trainer's traceback and error stay)."""
    kept: list[str] = []
    block: list[str] = []
    for line in lines:
        if is_noise(line):
            continue
        if line.startswith("Traceback (most recent call last):"):
            kept += block
            block = [line]
        elif block and (line[:1].isspace() or not line.strip()):
            block.append(line)
        elif block:
            if not any(wrapper in line for wrapper in WRAPPERS):
                kept += block + [line]
            block = []
        else:
            kept.append(line)
    return kept + block


#: How far from the end the first poll reads to find the last lines.
_START_WINDOW = 256 * 1024


class LogTail:
    """``poll()`` returns new complete lines; the first poll returns the last ``lines`` lines only.

    ``recent`` holds the last ``lines`` lines seen. A replaced or truncated log starts over
    (``reset`` set). Undecodable bytes are replaced, never fatal. Known library noise is left
    out unless ``raw``.
    """

    def __init__(self, path: str | os.PathLike[str], lines: int = 200, raw: bool = False) -> None:
        self.path = Path(path)
        self.lines = lines
        self.raw = raw
        self.recent: deque[str] = deque(maxlen=lines)
        self.offset: int | None = None
        self.reset = False
        self._inode: tuple[int, int] | None = None
        self._partial = b""

    def poll(self) -> list[str]:
        """Lines appended since the last poll (complete lines only)."""
        self.reset = False
        try:
            handle = open(self.path, "rb")  # noqa: SIM115 - opened before the `with` so that only a missing file is caught
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
        new = [line for line in new if line.strip() and (self.raw or not is_noise(line))]
        if first:
            new = new[-self.lines :]
        self.recent.extend(new)
        return new
