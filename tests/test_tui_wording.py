"""The TUI's words: one captions format in the TUI and the CLI, prompt errors on the right line,
each palette command once, checkboxes readable without colour, no command-line syntax."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import UserError
from core.gpu import resolve
from tests.tui_fixtures import sync
from tui.app import SdtuiApp
from tui.context import AppContext
from tui.wizard_state import WizardState


def test_captions_read_found_of_all_in_the_cli_as_in_the_tui(kohya_dataset) -> None:
    from cli.planning import format_scan
    from core.dataset.scan import scan_dataset

    data = kohya_dataset(subsets=((10, "sks dog", 4),))
    next((data / "10_sks dog").glob("*.txt")).unlink()
    scan = scan_dataset(data)
    assert scan.subsets[0].captions_label == "3/4"
    table = format_scan(scan)
    assert "captions found/all" in table and " 3/4 " in table


def test_a_prompt_error_names_the_line_the_user_sees(tmp_path: Path) -> None:
    state = WizardState(gpus=resolve("1x24GB"), base_dir=tmp_path)
    with pytest.raises(UserError, match="prompt line 3 "):
        state.set_prompts("a photo of sks dog\n\na photo --w 100")
    with pytest.raises(UserError, match="prompt line 2 "):
        state.set_prompts("# my prompts\na photo --d -1")


@sync
async def test_each_palette_command_appears_once(tmp_path: Path) -> None:
    app = SdtuiApp(AppContext(runs_dir=tmp_path, gpu_spec="1x24GB"), start="wizard", theme="textual-dark")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.3)
        for screen in (app.screen, app.screen_stack[0]):
            titles = [c.title for c in app.get_system_commands(screen)]
            assert titles.count("Dark/light") == 1 and len(titles) == len(set(titles)), titles


@sync
async def test_a_checkbox_reads_on_and_off_without_colour(tmp_path: Path) -> None:
    from tui.widgets.toggles import Check

    app = SdtuiApp(AppContext(runs_dir=tmp_path, gpu_spec="1x24GB"), start="wizard", theme="textual-dark")
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause(0.3)
        box = app.screen.query(Check).first()
        box.value = True
        await pilot.pause(0.05)
        on = box.render().plain
        box.value = False
        await pilot.pause(0.05)
        off = box.render().plain
        assert "✓" in on and "✓" not in off and on != off
