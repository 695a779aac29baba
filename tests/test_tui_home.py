"""The home screen: GPUs, runs with live state, keys to attach and start."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from textual.widgets import DataTable

from core.gpu import GpuSet
from tests.tui_fixtures import T0, make_run, make_runs, sync, until
from tui.app import SdtuiApp
from tui.context import AppContext
from tui.screens.dashboard import DashboardScreen
from tui.screens.home import HomeScreen


def _app(runs: Path, gpus: str | None = "1x24GB", clock=lambda: T0) -> SdtuiApp:
    return SdtuiApp(AppContext(runs_dir=runs, gpu_spec=gpus, clock=clock), theme="textual-dark")


def _rows(app: SdtuiApp) -> list[list[str]]:
    table = app.screen.query_one("#runs", DataTable)
    return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]


@sync
async def test_home_lists_runs_newest_first_with_state_step_and_loss(tmp_path: Path) -> None:
    app = _app(make_runs(tmp_path / "runs"))
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.screen.query_one("#runs").row_count == 3)
        rows = _rows(app)
        assert [r[0] for r in rows] == ["cat-dreambooth-20251009-100000", "dog-lora-20251009-093000", "shapes-lora-20251009-090000"]
        assert [r[1] for r in rows] == ["stopped", "failed", "finished"]
        assert rows[1][2] == "37/400"
        assert rows[2][4] == "1h 58m ago"
        assert float(rows[2][3]) > 0


@sync
async def test_home_shows_simulated_gpus(tmp_path: Path) -> None:
    app = _app(tmp_path / "runs", gpus="2x4090")
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: "RTX" in str(app.screen.query_one("#gpus").render()))
        await until(pilot, lambda: "No runs in" in str(app.screen.query_one("#runs-empty").render()))
        text = str(app.screen.query_one("#gpus").render())
        assert text.count("RTX 4090") == 2 and "24.0 GiB" in text and "bf16" in text
        assert "No runs in" in str(app.screen.query_one("#runs-empty").render())


@sync
async def test_home_says_which_runs_folder_it_shows_and_why(tmp_path: Path) -> None:
    runs = make_runs(tmp_path / "demo" / "runs")
    app = SdtuiApp(AppContext(runs_dir=runs, runs_reason="last used from this folder", gpu_spec="1x24GB", clock=lambda: T0), theme="textual-dark")
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.screen.query_one("#runs").row_count == 3)
        assert str(app.screen.query_one("#runs-title").render()) == f"Runs in {runs} (last used from this folder)"


@sync
async def test_home_without_gpu_says_so_and_offers_the_demo(tmp_path: Path) -> None:
    app = _app(tmp_path / "runs", gpus=None)
    app.context._gpus = GpuSet(gpus=[], reason="no NVIDIA driver was found", simulated=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: "No GPU" in str(app.screen.query_one("#gpus").render()))
        text = str(app.screen.query_one("#gpus").render())
        assert "No GPU here: no NVIDIA driver was found" in text
        assert "CPU demo" in text and "--gpus 1x24GB" in text


@sync
async def test_enter_attaches_and_escape_detaches(tmp_path: Path) -> None:
    app = _app(make_runs(tmp_path / "runs"))
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.screen.query_one("#runs").row_count == 3)
        await pilot.press("down", "enter")
        await pilot.pause(0.3)
        assert isinstance(app.screen, DashboardScreen)
        assert app.screen.run.id == "dog-lora-20251009-093000"
        await pilot.press("escape")
        assert isinstance(app.screen, HomeScreen)


@sync
async def test_a_new_run_and_a_state_change_show_up_without_a_key(tmp_path: Path) -> None:
    runs = make_runs(tmp_path / "runs")
    app = _app(runs, clock=time.time)
    HomeScreen.REFRESH_S = 0.2
    try:
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: len(_rows(app)) == 3)
            make_run(runs, "new-lora-20251009-110000", "running", steps=5, total=50, created=time.time())
            status = runs / "new-lora-20251009-110000" / "status.json"
            status.write_text(json.dumps({**json.loads(status.read_text()), "updated_at": time.time()}))
            # a refresh may catch the folder half made (no status yet: lost); a later one shows it running
            await until(pilot, lambda: len(_rows(app)) == 4 and _rows(app)[0][1] == "running")
            rows = _rows(app)
            assert rows[0][:3] == ["new-lora-20251009-110000", "running", "5/50"]
    finally:
        HomeScreen.REFRESH_S = 1.5


@sync
async def test_logs_key_opens_the_log_of_the_selected_run(tmp_path: Path) -> None:
    app = _app(make_runs(tmp_path / "runs"))
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.screen.query_one("#runs").row_count == 3)
        await pilot.press("l")
        await until(pilot, lambda: len(app.screen.query_one("#log").lines) > 10)
        log = app.screen.query_one("#log")
        assert "step 79: loss" in "\n".join(log.lines)
        await pilot.press("escape")
        assert isinstance(app.screen, HomeScreen)


@sync
async def test_home_selects_the_run_just_launched(tmp_path: Path) -> None:
    runs = make_runs(tmp_path / "runs")
    app = _app(runs)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.screen.query_one("#runs").row_count == 3)
        await pilot.press("down", "down")
        assert app.screen.selected().run_id == "shapes-lora-20251009-090000"
        make_run(runs, "new-lora-20251009-110000", "running", steps=3, total=100, created=T0 - 60)
        app.context.launched = "new-lora-20251009-110000"
        app.screen.refresh_runs()
        await until(pilot, lambda: app.screen.query_one("#runs").row_count == 4)
        await pilot.pause(0.1)
        assert app.screen.selected().run_id == "new-lora-20251009-110000", "l and Enter act on the run just launched"


@pytest.mark.slow
@sync
async def test_escape_asks_before_leaving_the_wizard_and_new_run_offers_it_again(tmp_path: Path) -> None:
    from tui.screens.wizard import WizardScreen
    from tui.widgets.confirm import ConfirmScreen

    app = _app(tmp_path / "runs")
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("n")
        await until(pilot, lambda: isinstance(app.screen, WizardScreen))
        wizard = app.screen
        wizard.query_one("#model-path").value = "sdxl"
        await pilot.pause(0.1)
        await pilot.press("ctrl+n")
        assert wizard.index == 1
        await pilot.press("escape")
        assert isinstance(app.screen, ConfirmScreen), "Esc asks first"
        await pilot.press("n")
        assert app.screen is wizard, "n stays in the wizard"
        await pilot.press("escape", "y")
        await until(pilot, lambda: isinstance(app.screen, HomeScreen))
        await pilot.press("n")
        assert isinstance(app.screen, ConfirmScreen)
        assert "model sdxl" in str(app.screen.query_one("#question").render())
        await pilot.press("y")
        await until(pilot, lambda: isinstance(app.screen, WizardScreen))
        assert app.screen.state.model == "sdxl" and app.screen.index == 1, "the unfinished wizard comes back where it was"
        await pilot.press("escape", "y")
        await until(pilot, lambda: isinstance(app.screen, HomeScreen))
        await pilot.press("n", "n")
        await until(pilot, lambda: isinstance(app.screen, WizardScreen))
        assert app.screen.state.model == "" and app.screen.index == 0, "Start over gives a fresh wizard"


def _select(app: SdtuiApp, run_id: str) -> None:
    table = app.screen.query_one("#runs", DataTable)
    table.move_cursor(row=table.get_row_index(run_id))


@sync
async def test_r_on_a_failed_run_asks_first_and_says_truly_where_it_resumes_from(tmp_path: Path, monkeypatch) -> None:
    import core.launch.start as start
    from tui.widgets.confirm import ConfirmScreen

    resumed = []
    monkeypatch.setattr(start, "resume_run", lambda run, gpus=None, **_: resumed.append(run.id))
    runs = make_runs(tmp_path / "runs")
    app = _app(runs)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.screen.query_one("#runs").row_count == 3)
        _select(app, "dog-lora-20251009-093000")
        await pilot.press("r")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        assert "Resume dog-lora-20251009-093000 from the start (it has no checkpoint)?" in str(app.screen.query_one("#question").render())
        await pilot.press("n")
        await until(pilot, lambda: isinstance(app.screen, HomeScreen))
        assert resumed == []
        _select(app, "shapes-lora-20251009-090000")
        monkeypatch.undo()  # the real refusal: a finished run starts again with sdtui train, not r
        await pilot.press("r")
        await pilot.pause(0.1)
        assert isinstance(app.screen, HomeScreen)
        assert any("has finished" in str(n.message) for n in app._notifications)
        monkeypatch.setattr(start, "resume_run", lambda run, gpus=None, **_: resumed.append(run.id))
        _select(app, "dog-lora-20251009-093000")
        checkpoint = runs / "dog-lora-20251009-093000" / "checkpoints" / "step-30"
        checkpoint.mkdir(parents=True)
        (checkpoint / "state.json").write_text('{"step": 30}')  # a checkpoint counts when its state names its step
        await pilot.press("r")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        assert "from its checkpoint at step 30?" in str(app.screen.query_one("#question").render())
        await pilot.press("y")
        await until(pilot, lambda: isinstance(app.screen, DashboardScreen))
        assert resumed == ["dog-lora-20251009-093000"]
        assert any("from its checkpoint at step 30" in str(n.message) for n in app._notifications)


@sync
async def test_delete_asks_first_and_removes_only_the_run_folder_and_stop_asks_for_a_live_run(tmp_path: Path, monkeypatch) -> None:
    import core.launch.control as control
    from tui.widgets.confirm import ConfirmScreen

    runs = make_runs(tmp_path / "runs")
    live = make_run(runs, "live-20251009-110000", "running", steps=5, total=50, created=T0 - 60)
    status = json.loads((live / "status.json").read_text())
    (live / "status.json").write_text(json.dumps({**status, "created_at": T0 + 1, "updated_at": time.time() + 3600}))
    stopped = []
    monkeypatch.setattr(control, "stop_run", lambda run, **kw: stopped.append(run.id) or control.StopResult("stopped", True, []))
    app = _app(runs)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.screen.query_one("#runs").row_count == 4)
        _select(app, "live-20251009-110000")
        await pilot.pause(0.1)
        footer = {b.binding.description for b in app.screen.active_bindings.values() if b.enabled}
        assert "Stop" in footer and "Delete" not in footer  # a live run cannot be deleted
        await pilot.press("delete")
        assert not isinstance(app.screen, ConfirmScreen) and live.is_dir()
        await pilot.press("x")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        assert "Stop live-20251009-110000?" in str(app.screen.query_one("#question").render())
        await pilot.press("y")
        await until(pilot, lambda: stopped == ["live-20251009-110000"])
        _select(app, "dog-lora-20251009-093000")
        await pilot.pause(0.1)
        await pilot.press("delete")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("n")
        await pilot.pause(0.1)
        assert (runs / "dog-lora-20251009-093000").is_dir()
        await pilot.press("delete")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(pilot, lambda: app.screen.query_one("#runs").row_count == 3)
        assert not (runs / "dog-lora-20251009-093000").exists()
        assert sorted(p.name for p in runs.iterdir()) == ["cat-dreambooth-20251009-100000", "live-20251009-110000", "shapes-lora-20251009-090000"]


@sync
async def test_a_long_run_id_is_shown_whole_at_80x24(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    long_id = "sks-dog-lokr-prodigy-clip-skip-2-20261206-120000"
    make_run(runs, long_id, "finished", steps=5, total=5)
    app = _app(runs)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.screen.query_one("#runs").row_count == 1)
        await pilot.pause(0.2)
        shown = "\n".join(strip.text for strip in app.screen._compositor.render_strips())
        cell = [line[2:].split("  ")[0].strip() for line in shown.splitlines() if "sks-dog" in line or "20261206" in line]
        assert "".join(cell) == long_id, shown
