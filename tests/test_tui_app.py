"""App-wide: the theme for tmux and truecolor terminals, dark/light, NO_COLOR, the command palette."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tui_fixtures import sync
from tui.app import SdtuiApp, default_theme
from tui.context import AppContext
from tui.screens.wizard import WizardScreen


def test_default_theme_uses_ansi_colours_in_tmux_and_without_truecolor() -> None:
    assert default_theme({"TMUX": "/tmp/tmux-0/default,1,0", "COLORTERM": "truecolor"}) == "ansi-dark"
    assert default_theme({"TERM": "xterm-256color"}) == "ansi-dark"
    assert default_theme({"TERM": "xterm-256color", "COLORTERM": "truecolor"}) == "textual-dark"
    assert default_theme({"SDTUI_THEME": "nord", "TMUX": "x"}) == "nord"


@sync
async def test_ctrl_t_switches_dark_and_light(tmp_path: Path) -> None:
    app = SdtuiApp(AppContext(runs_dir=tmp_path, gpu_spec="1x24GB"), theme="ansi-dark")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("ctrl+t")
        assert app.theme == "ansi-light"
        await pilot.press("ctrl+t")
        assert app.theme == "ansi-dark"


@sync
async def test_no_color_is_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    app = SdtuiApp(AppContext(runs_dir=tmp_path, gpu_spec="1x24GB"))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.1)
        assert app.no_color


@sync
async def test_command_palette_opens_the_wizard(tmp_path: Path) -> None:
    app = SdtuiApp(AppContext(runs_dir=tmp_path, gpu_spec="1x24GB"), theme="textual-dark")
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("ctrl+p")
        await pilot.pause(0.2)
        await pilot.press(*"New run")
        await pilot.pause(0.5)
        await pilot.press("enter")
        await pilot.pause(0.3)
        assert isinstance(app.screen, WizardScreen)


def test_attach_to_an_unknown_run_is_a_clear_error(tmp_path: Path) -> None:
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-m", "cli", "--runs-dir", str(tmp_path), "attach", "nope"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, env={"PYTHONPATH": str(repo), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2
    assert "there is no run 'nope'" in result.stderr and "Traceback" not in result.stderr
