"""Run a command on a pseudo-terminal, as a user's shell would, and watch what it draws.

Used by the TUI benchmarks: they time the real ``sdtui`` command from spawn to the first
frame, and sample its CPU time while it follows a run. The terminal is a tmux-like 120×40
``screen-256color`` one (the brief's user runs sdtui inside tmux), so nothing waits for
replies to terminal queries that only a real emulator would answer.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Sequence

COLUMNS, ROWS = 120, 40
ALT_SCREEN = b"\x1b[?1049h"
CTRL_Q = b"\x11"


class PtyProcess:
    """A child process whose stdin/stdout/stderr are the slave side of a fresh pty."""

    def __init__(self, argv: Sequence[str], env: dict[str, str] | None = None, cwd: str | None = None) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
        child_env = dict(os.environ if env is None else env)
        child_env["TERM"] = "screen-256color"
        child_env.pop("TMUX", None)
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            list(argv),
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=child_env,
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
        )
        os.close(slave)
        self.master = master
        self.output = bytearray()

    def read_until(self, predicate, timeout_s: float) -> float | None:
        """Read output until ``predicate(output)`` holds; seconds since spawn, or None on timeout/exit."""
        deadline = self.started + timeout_s
        while True:
            if predicate(bytes(self.output)):
                return time.perf_counter() - self.started
            remaining = deadline - time.perf_counter()
            if remaining <= 0 or not self.drain(min(remaining, 0.05)):
                if self.proc.poll() is not None and not predicate(bytes(self.output)):
                    return None
                if remaining <= 0:
                    return None

    def drain(self, wait_s: float) -> bool:
        """Read whatever is there within ``wait_s``; False once the terminal is closed."""
        ready, _, _ = select.select([self.master], [], [], wait_s)
        if not ready:
            return True
        try:
            chunk = os.read(self.master, 65536)
        except OSError:
            return False
        if not chunk:
            return False
        self.output.extend(chunk)
        return True

    def close(self, quit_bytes: bytes = CTRL_Q, grace_s: float = 5.0) -> int | None:
        """Ask the app to quit with ``quit_bytes``, then end it by its process group if it lingers."""
        try:
            if self.proc.poll() is None:
                os.write(self.master, quit_bytes)
                deadline = time.perf_counter() + grace_s
                while self.proc.poll() is None and time.perf_counter() < deadline:
                    self.drain(0.05)
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(timeout=grace_s)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait()
        finally:
            os.close(self.master)
        return self.proc.returncode


def first_frame_marker(text: bytes) -> bool:
    """Bytes that mean the home screen has been painted: the alternate screen, then its titles."""
    start = text.find(ALT_SCREEN)
    return start >= 0 and b"GPUs" in text[start:] and b"Runs" in text[start:]
