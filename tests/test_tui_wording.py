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


@pytest.mark.slow
@sync
async def test_each_palette_command_appears_once(tmp_path: Path) -> None:
    app = SdtuiApp(AppContext(runs_dir=tmp_path, gpu_spec="1x24GB"), start="wizard", theme="textual-dark")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.3)
        for screen in (app.screen, app.screen_stack[0]):
            titles = [c.title for c in app.get_system_commands(screen)]
            assert titles.count("Dark/light") == 1 and len(titles) == len(set(titles)), titles


@pytest.mark.slow
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


def test_plan_sentences_shown_in_the_tui_name_fields_and_steps_not_commands() -> None:
    from tui.format import tui_terms

    said = [
        tui_terms("enable the memory savers: --set gradient_checkpointing=true --set batch_size=1"),
        tui_terms("the dataset scan found 2 error(s), e.g. /d/x.png: truncated; run 'sdtui scan /d' for all"),
        tui_terms("the warm-up of 9 steps is longer than the run (3 steps); lower schedule.lr_warmup_steps"),
        tui_terms("dreambooth without class images: no prior preservation; add a class folder (--reg DIR) to keep the class from drifting"),
        tui_terms("use it as the class folder: --reg '/d/reg'"),
    ]
    assert said[0] == "enable the memory savers: turn on gradient_checkpointing, set batch_size to 1"
    assert said[1].endswith("; the Dataset step lists them all")
    assert said[2].endswith("lower lr_warmup_steps")
    for sentence in said:
        assert "sdtui" not in sentence and "--" not in sentence and " = " not in sentence and "schedule." not in sentence, sentence


def test_sdtui_plan_says_why_there_is_no_gpu_without_nested_parentheses(tmp_path: Path, kohya_dataset) -> None:
    from cli.planning import format_plan
    from core.config import new_config
    from core.dataset.scan import scan_dataset
    from core.gpu import GpuSet
    from core.plan.planner import make_plan

    data = kohya_dataset()
    config = new_config("dog", "", "sd1", "lora", scan_dataset(data).subset_configs(), {})
    gpus = GpuSet(gpus=[], reason="no NVIDIA driver was found (the NVML library libnvidia-ml could not be loaded)", simulated=False)
    line = next(x for x in format_plan(make_plan(config, scan_dataset(data), gpus)).splitlines() if x.startswith("GPUs"))
    assert line.endswith("none: no NVIDIA driver was found (the NVML library libnvidia-ml could not be loaded)")
    assert "))" not in line
