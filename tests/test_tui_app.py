"""App-wide: the theme for tmux and truecolor terminals, the image protocol, dark/light, NO_COLOR, the command palette."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tui_fixtures import sync
from tui.app import SdtuiApp, default_theme, use_half_blocks
from tui.context import AppContext
from tui.screens.wizard import WizardScreen


def test_default_theme_uses_ansi_colours_in_tmux_and_without_truecolor() -> None:
    assert default_theme({"TMUX": "/tmp/tmux-0/default,1,0", "COLORTERM": "truecolor"}) == "ansi-dark"
    assert default_theme({"TERM": "xterm-256color"}) == "ansi-dark"
    assert default_theme({"TERM": "xterm-256color", "COLORTERM": "truecolor"}) == "textual-dark"
    assert default_theme({"SDTUI_THEME": "nord", "TMUX": "x"}) == "nord"


def test_samples_are_half_blocks_in_tmux_screen_off_a_tty_or_when_asked() -> None:
    assert use_half_blocks({"TMUX": "/tmp/tmux-0/default,1,0", "TERM": "xterm-256color"}, is_tty=True)
    assert use_half_blocks({"TERM": "screen-256color"}, is_tty=True)
    assert use_half_blocks({"TERM": "xterm-256color"}, is_tty=False)
    assert use_half_blocks({"TERM": "xterm-kitty", "SDTUI_IMAGES": "halfcell"}, is_tty=True)
    assert not use_half_blocks({"TERM": "xterm-kitty"}, is_tty=True)


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


@pytest.mark.slow
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
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(repo), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2
    assert "there is no run 'nope'" in result.stderr and "Traceback" not in result.stderr


@sync
async def test_every_key_of_the_screen_is_a_palette_command(tmp_path: Path) -> None:
    import json
    import time

    from core.atomic import read_json
    from core.runs.rundir import RunDir
    from tests.tui_fixtures import make_run, make_runs, until
    from tui.screens.dashboard import DashboardScreen

    runs = make_runs(tmp_path / "runs")
    live = make_run(runs, "live-20251009-120000", "running", steps=10, total=100, created=time.time())
    (live / "status.json").write_text(json.dumps({**json.loads((live / "status.json").read_text()), "updated_at": time.time()}))
    app = SdtuiApp(AppContext(runs_dir=runs, gpu_spec="1x24GB"), theme="textual-dark")
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.screen.query_one("#runs").row_count == 4)
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert {"New run", "Open config", "Attach", "Resume", "Logs", "Demo"} <= set(titles)
        app.open_dashboard(RunDir(live))
        await until(pilot, lambda: isinstance(app.screen, DashboardScreen) and app.screen.state == "running")
        await pilot.press("ctrl+p")
        await pilot.pause(0.2)
        await pilot.press(*"save")
        await pilot.pause(0.5)
        await pilot.press("enter")
        await until(pilot, lambda: (live / "control.json").exists())
        assert [r["action"] for r in read_json(live / "control.json")["requests"]] == ["save"]
        await pilot.press("d")
        app.open_dashboard(RunDir(runs / "cat-dreambooth-20251009-100000"))
        await until(pilot, lambda: isinstance(app.screen, DashboardScreen) and app.screen.state == "stopped")
        await pilot.pause(0.1)
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert "Detach" in titles and not {"Save", "Sample", "Pause", "Stop"} & set(titles), "nothing to save or pause on a stopped run"
        footer = app.screen.query_one("Footer")
        keys = [item.description for item in footer.query("FooterKey")]
        assert "Detach" in keys and "Save" not in keys and "Pause" not in keys
