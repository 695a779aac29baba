"""Drive ``sdtui`` in a real tmux session: the home screen, attach, detach, the wizard, quit."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.tui_fixtures import make_runs

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (.ci/run installs it)")]


class Tmux:
    """One tmux server on its own socket, so nothing else is touched."""

    def __init__(self) -> None:
        self.socket = f"sdtui-test-{uuid.uuid4().hex[:8]}"

    def run(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=30, check=False).stdout

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "main")

    def wait_for(self, text: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen()
            if text in screen:
                return screen
            time.sleep(0.2)
        raise AssertionError(f"{text!r} did not appear; the screen was:\n{self.screen()}")

    def keys(self, *keys: str) -> None:
        self.run("send-keys", "-t", "main", *keys)


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    session = Tmux()
    try:
        yield session
    finally:
        session.run("kill-server")


def test_sdtui_in_tmux(tmux: Tmux, tmp_path: Path) -> None:
    runs = make_runs(tmp_path / "runs")
    tmux.run(
        "new-session",
        "-d",
        "-x",
        "120",
        "-y",
        "40",
        "-s",
        "main",
        "-c",
        str(tmp_path),
        "-e",
        f"PYTHONPATH={REPO}",
        "-e",
        "HF_HUB_OFFLINE=1",
        sys.executable,
        "-m",
        "cli",
        "--runs-dir",
        str(runs),
        "--gpus",
        "2x4090",
    )
    tmux.wait_for("shapes-lora-20251009-090000")
    tmux.wait_for("GeForce RTX 4090")
    screen = tmux.wait_for("37/400")
    assert "failed" in screen and "finished" in screen
    tmux.keys("Down", "Enter")
    screen = tmux.wait_for("Fix:")
    assert "FAILED" in screen and "out of memory at step 37" in screen
    tmux.keys("Escape")
    tmux.wait_for("n New run")
    tmux.keys("n")
    screen = tmux.wait_for("Base model")
    assert "1 Model" in screen and "7 Review" in screen
    tmux.keys("s", "d", "1")
    tmux.wait_for("Detected family: sd1")
    tmux.keys("Escape")
    tmux.wait_for("Leave the wizard?")
    tmux.keys("y")
    tmux.wait_for("n New run")
    tmux.keys("q")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and "main" in tmux.run("list-sessions"):
        time.sleep(0.2)
    assert "main" not in tmux.run("list-sessions"), "q quits the app (and so the session)"
