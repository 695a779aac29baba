"""End to end: the demo wizard launches a real detached run on the tiny model and the dashboard follows it."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from core.demo import prepare_demo, workspace
from tests.tui_fixtures import sync
from tui.app import SdtuiApp
from tui.context import AppContext
from tui.screens.dashboard import DashboardScreen

FAST = ["schedule.max_steps=5", "schedule.sample_every_steps=2", "schedule.save_every_epochs=0"]


async def _until(pilot, condition, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, f"timed out after {timeout:.0f} s"
        await pilot.pause(0.25)


def _record_paints(app: SdtuiApp) -> list:
    """The screens whose updates reach the terminal from now on (what the user sees change).

    The first Launch once left the Review step on the terminal for 30 s while the dashboard was
    already the current screen: its updates never reached the display until a key was pressed.
    """
    painted: list = []
    display = app._display

    def recording(screen, renderable) -> None:
        if renderable is not None and not app._batch_count:
            painted.append((screen, getattr(screen, "state", None)))
        display(screen, renderable)

    app._display = recording
    return painted


@pytest.mark.slow
@sync
async def test_demo_wizard_launches_and_the_dashboard_follows_the_run(tmp_path: Path, tiny_models, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_models("sd1"), workspace(tmp_path / "demo").model)
    ws = prepare_demo(tmp_path / "demo", FAST)
    app = SdtuiApp(AppContext(runs_dir=ws.runs, workdir=ws.root, demo=ws), start="wizard", theme="textual-dark")
    DashboardScreen.REFRESH_S = 0.5
    try:
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause(0.3)
            assert app.screen.state.model == str(ws.model) and app.screen.state.family == "sd1"
            assert not [p for p in app.screen.state.scan.problems if "upscaled" in p.message], "the demo trains at 64 px: no upscaling warning"
            wizard = app.screen
            for _ in range(6):
                await pilot.press("ctrl+n")
                await pilot.pause(0.2)
            assert wizard.index == 6, wizard.error
            assert "max_steps = 5" in wizard.query_one("#toml").text
            # back to the schedule, make the run shorter, forward again: the review follows
            await pilot.press("ctrl+b", "ctrl+b")
            assert wizard.index == 4
            wizard.query_one("#v-max_steps").value = "3"
            await pilot.pause(0.2)
            await pilot.press("ctrl+n", "ctrl+n")
            await pilot.pause(0.2)
            assert wizard.index == 6, wizard.error
            assert "max_steps = 3" in wizard.query_one("#toml").text
            painted = _record_paints(app)
            await pilot.press("ctrl+l")
            await _until(pilot, lambda: isinstance(app.screen, DashboardScreen), 120)
            dashboard = app.screen
            assert wizard not in app.screen_stack, "the dashboard takes the wizard's place"
            await _until(pilot, lambda: any(screen is dashboard for screen, _ in painted), 5)
            await _until(pilot, lambda: dashboard.state in ("finished", "failed", "lost"), 400)
            await pilot.pause(1.0)
            assert dashboard.state == "finished", dashboard.status
            assert (dashboard, "finished") in painted, "the dashboard's news reach the terminal"
            assert app.context.draft is None
            assert len(dashboard.query_one("#loss").data[0]) == 3
            assert "step 2 ·" in str(dashboard.query_one("#sample-caption").render())
            assert "FINISHED" in str(dashboard.query_one("#state").render())
            outputs = str(dashboard.query_one("#outputs").render())
            assert outputs.startswith("Output: ")
            whole = "".join(line[len("Output: ") :] for line in outputs.split("\n"))  # long paths go on after a '/'
            assert str(dashboard.run.path.resolve() / "output" / "demo.safetensors") in whole
            assert str(dashboard.run.path.resolve() / "output" / "diffusers") in whole
            await pilot.press("escape")
            home = app.screen
            await _until(pilot, lambda: home.selected() is not None and home.selected().run_id == dashboard.run.id, 10)
    finally:
        DashboardScreen.REFRESH_S = 1.0
    runs = list(ws.runs.iterdir())
    assert len(runs) == 1 and "max_steps = 3" in (runs[0] / "run.toml").read_text()
    log = (runs[0] / "train.log").read_text()
    assert "[sdtui] step 1/3  loss " in log and "[sdtui] step 3/3  loss " in log and " img/s  ETA " in log
    assert "requires torchvision" not in log
    assert "max_steps = 3" in ws.config.read_text()


@pytest.mark.slow
@sync
async def test_launch_asks_before_a_second_live_run_of_the_same_config(tmp_path: Path, tiny_models, monkeypatch) -> None:
    from core.config import save_config
    from tests.test_launch_preflight import _live_twin_of
    from tui.widgets.confirm import ConfirmScreen

    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_models("sd1"), workspace(tmp_path / "demo").model)
    ws = prepare_demo(tmp_path / "demo", FAST)
    app = SdtuiApp(AppContext(runs_dir=ws.runs, workdir=ws.root, demo=ws), start="wizard", theme="textual-dark")
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause(0.3)
        wizard = app.screen
        for _ in range(6):
            await pilot.press("ctrl+n")
            await pilot.pause(0.2)
        assert wizard.index == 6, wizard.error
        held = _live_twin_of(ws.config, ws.runs)  # the config the wizard saves, live in the runs folder
        twin = next(ws.runs.iterdir()).name
        # the wizard saves its own config path first: make the twin's run.toml that very config
        save_config(wizard.state.to_config(), ws.runs / twin / "run.toml")
        await pilot.press("ctrl+l")
        await _until(pilot, lambda: isinstance(app.screen, ConfirmScreen), 60)
        assert f"Run {twin} of the same config is live on the same GPUs" in app.screen.question
        await pilot.press("escape")
        await _until(pilot, lambda: app.screen is wizard, 10)
        await pilot.pause(0.2)
        assert not wizard.launching and [p.name for p in ws.runs.iterdir() if not p.name.startswith(".")] == [twin]
        held.close()
