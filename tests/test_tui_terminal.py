"""The TUI process ends when its terminal hangs up, instead of spinning on a dead tty."""

from __future__ import annotations

import os
import pty
import sys
import time

from tests.conftest import REPO


def test_a_hung_up_terminal_ends_the_process() -> None:
    pid, master = pty.fork()
    if pid == 0:
        sys.path.insert(0, str(REPO))
        try:
            import signal

            from tui.app import watch_terminal

            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as when the hang-up never reaches it

            watch_terminal(interval_s=0.1)
            time.sleep(20)
        finally:
            os._exit(3)
    time.sleep(1.0)
    assert os.waitpid(pid, os.WNOHANG) == (0, 0), "the process ended while its terminal was alive"
    os.close(master)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        raise AssertionError("the process outlived its terminal")
    assert os.waitstatus_to_exitcode(status) == 129


def test_a_pty_that_is_not_the_controlling_terminal_is_alive() -> None:
    """Benchmarks drive the app on a pty of a new session (no controlling terminal): that is no hang-up."""
    import subprocess

    master, slave = os.openpty()
    code = "import time\nfrom tui.app import watch_terminal\nwatch_terminal(interval_s=0.1)\ntime.sleep(1.0)\n"
    proc = subprocess.run([sys.executable, "-c", code], stdin=slave, stdout=slave, stderr=slave, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True, timeout=30)
    os.close(slave)
    os.close(master)
    assert proc.returncode == 0  # not 129: the watcher did not take it for a dead terminal
