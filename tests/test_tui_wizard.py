"""The wizard: every step driven with the Pilot, bad input refused with its sentence, back and forth."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomlkit
from textual.widgets import Button, DataTable, Input, TextArea

from core.errors import UserError
from core.gpu import resolve
from tests.tui_fixtures import sync, until
from tui.app import SdtuiApp
from tui.context import AppContext
from tui.screens.wizard import WizardScreen
from tui.wizard_state import WizardState


def _app(tmp_path: Path, gpus: str = "1x24GB") -> SdtuiApp:
    return SdtuiApp(AppContext(runs_dir=tmp_path / "runs", gpu_spec=gpus), start="wizard", theme="textual-dark")


def _error(app: SdtuiApp) -> str:
    return str(app.screen.query_one("#step-error").render())


def _next_enabled(app: SdtuiApp) -> bool:
    return not app.screen.query_one("#next", Button).disabled


async def _type(pilot, selector: str, text: str) -> None:
    field = pilot.app.screen.query_one(selector, Input)
    field.value = text
    await pilot.pause(0.05)


async def _to_dataset(pilot, data: Path) -> None:
    await _type(pilot, "#model-path", "sd1")
    await pilot.press("ctrl+n")
    await _type(pilot, "#dataset-path", str(data))
    screen = pilot.app.screen
    await until(pilot, lambda: screen.state.scan is not None or "Dataset:scan" in screen.state.field_errors)
    await pilot.pause(0.1)


@sync
async def test_model_step_refuses_a_missing_path_and_accepts_a_family(tmp_path: Path) -> None:
    app = _app(tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause(0.2)
        assert isinstance(app.screen, WizardScreen) and app.screen.index == 0
        assert not _next_enabled(app)
        await _type(pilot, "#model-path", str(tmp_path / "nowhere.safetensors"))
        assert "does not exist" in _error(app) and not _next_enabled(app)
        await pilot.press("ctrl+n")
        assert app.screen.index == 0
        await _type(pilot, "#model-path", "sdxl")
        assert _error(app) == "" and _next_enabled(app)
        assert "sdxl" in str(app.screen.query_one("#model-family").render())


@sync
async def test_the_model_field_completes_a_model_name_as_well_as_a_path(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "flowers").mkdir()
    monkeypatch.chdir(tmp_path)
    app = _app(tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause(0.2)
        field = app.screen.query_one("#model-path", Input)
        field.focus()
        await pilot.press(*"flux-s")
        await until(pilot, lambda: field._suggestion == "flux-schnell")
        await pilot.press("right")
        assert field.value == "flux-schnell"
        await until(pilot, lambda: "flux" in str(app.screen.query_one("#model-family").render()))
        field.value = ""
        await pilot.press(*"flo")
        await until(pilot, lambda: field._suggestion == "flowers/")


@pytest.mark.slow
@sync
async def test_dataset_step_refuses_a_folder_without_images(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "10_nothing").mkdir(parents=True)
    app = _app(tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        await _to_dataset(pilot, empty)
        assert app.screen.index == 1
        assert "no usable training image" in _error(app)
        assert not _next_enabled(app)
        await _type(pilot, "#dataset-path", str(tmp_path / "missing"))
        await until(pilot, lambda: "does not exist" in _error(app))


async def _burst(pilot, *keys: tuple[str, str | None]) -> None:
    """Keys posted at once, as a slow SSH link delivers them in one read (Pilot.press waits between keys)."""
    from textual import events

    for key, character in keys:
        pilot.app.post_message(events.Key(key, character))
    await pilot.pause(0.2)


@pytest.mark.slow
@sync
async def test_dataset_table_and_repeats_edited_in_place(tmp_path: Path, kohya_dataset) -> None:
    from tui.widgets.ask import AskScreen

    data = kohya_dataset(subsets=((10, "sks dog", 4), (5, "sks cat", 3)))
    app = _app(tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        await _to_dataset(pilot, data)
        wizard = app.screen
        table = wizard.query_one("#subsets", DataTable)
        assert table.row_count == 2
        assert "55 items per epoch" in str(wizard.query_one("#scan-summary").render())
        table.focus()
        await pilot.press("e")
        await pilot.pause(0.1)
        for typed, sentence in (("0", "at least 1"), ("", "are empty"), ("ten", "whole number such as 10, not 'ten'")):
            app.screen.query_one("#answer", Input).value = typed
            await pilot.press("enter")
            await pilot.pause(0.1)
            assert isinstance(app.screen, AskScreen), f"{typed!r} closed the dialog"
            assert sentence in str(app.screen.query_one("#answer-error").render())
        app.screen.query_one("#answer", Input).value = "10"
        app.screen.query_one("#answer", Input).action_end()
        await _burst(pilot, ("backspace", "\x7f"), ("backspace", "\x7f"), ("2", "2"), ("0", "0"), ("enter", "\r"))
        assert app.screen is wizard, "Enter applied the repeats"
        assert _error(app) == ""
        assert "95 items per epoch" in str(wizard.query_one("#scan-summary").render())
        assert (data / "10_sks dog").is_dir(), "the dataset is never renamed"


@pytest.mark.slow
@sync
async def test_a_file_left_out_is_a_warning_the_rescan_sees_it_go_and_repeats_survive_path_edits(tmp_path: Path, kohya_dataset) -> None:
    data = kohya_dataset(subsets=((10, "sks dog", 4),))
    broken = data / "10_sks dog" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    app = _app(tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        await _to_dataset(pilot, data)
        wizard = app.screen
        problems = str(wizard.query_one("#problems").render())
        assert "left out: broken.jpg" in problems
        assert _error(app) == "" and _next_enabled(app), "a file the scan leaves out does not block Next"
        wizard.state.set_repeats(str(data / "10_sks dog"), "20")
        broken.rename(tmp_path / "broken.jpg")
        await pilot.press("ctrl+r")
        await until(pilot, lambda: "broken.jpg" not in str(wizard.query_one("#problems").render()))
        await _type(pilot, "#dataset-path", str(data) + "x")
        await _type(pilot, "#dataset-path", str(data))
        await until(pilot, lambda: wizard.state.scan is not None and wizard.state.scan.root == str(data))
        assert wizard.state.dataset_scan.items_per_epoch == 4 * 20, "editing the path kept the edited repeats"


@pytest.mark.slow
@sync
async def test_recipe_step_refuses_batch_zero_and_a_recipe_that_does_not_fit(tmp_path: Path, kohya_dataset) -> None:
    app = _app(tmp_path, gpus="1x8GB")
    async with app.run_test(size=(100, 30)) as pilot:
        await _to_dataset(pilot, kohya_dataset())
        await pilot.press("ctrl+n")
        await pilot.press("ctrl+n")
        await pilot.pause(0.2)
        assert app.screen.index == 3
        assert _error(app) == ""
        await _type(pilot, "#v-batch_size", "0")
        assert "batch_size must be at least 1" in _error(app) and not _next_enabled(app)
        await _type(pilot, "#v-batch_size", "1")
        assert _error(app) == ""
        await _type(pilot, "#v-resolution", "2048")
        await _type(pilot, "#v-batch_size", "64")
        assert "GiB but the GPU has 8.0 GiB" in _error(app) and not _next_enabled(app)
        assert "does not fit" in str(app.screen.query_one("#estimate").render())


@pytest.mark.slow
@sync
async def test_whole_wizard_back_and_change_then_save(tmp_path: Path, kohya_dataset, monkeypatch) -> None:
    import core.gpu

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(core.gpu, "probe", lambda: core.gpu.GpuSet([], reason="no NVIDIA driver was found"))
    data = kohya_dataset()
    app = _app(tmp_path, gpus="2x4090")
    async with app.run_test(size=(100, 30)) as pilot:
        await _to_dataset(pilot, data)
        await pilot.press("ctrl+n")
        await pilot.click("#method-dreambooth")
        await pilot.press("ctrl+n")
        await pilot.pause(0.2)
        assert app.screen.state.recipe.startswith("sd15-dreambooth")
        await pilot.press("ctrl+n")
        await pilot.pause(0.2)
        table = app.screen.query_one("#gpu-table", DataTable)
        assert [str(table.get_row_at(i)[0]) for i in range(table.row_count)] == ["1", "2 *", "4", "8"]
        await _type(pilot, "#v-max_steps", "400")
        assert "step mode" in str(app.screen.query_one("#plan-warnings").render())
        await _type(pilot, "#v-split", "0.5")
        assert "split must be below 0.5" in _error(app)
        await _type(pilot, "#v-split", "0.25")
        await _type(pilot, "#v-every_n_steps", "100")
        assert "validation loss on 1 image every 100 steps (4 times); adds" in str(app.screen.query_one("#plan-warnings").render())
        await _type(pilot, "#price", "abc")
        assert "is not a number" in _error(app)
        await _type(pilot, "#price", "0.79")
        assert "$" in str(table.get_row_at(0)[7])
        await pilot.press("ctrl+n")
        app.screen.query_one("#prompts", TextArea).text = "a photo of sks dog --w 512 --h 512"
        await pilot.pause(0.1)
        await pilot.press("ctrl+n")
        await pilot.pause(0.1)
        assert app.screen.index == 6
        toml = app.screen.query_one("#toml", TextArea).text
        assert 'kind = "dreambooth"' in toml and "max_steps = 400" in toml
        # planned for the simulated 4090s, launched on what this machine has (no GPU: one CPU process)
        note = " ".join(str(app.screen.query_one("#launch-note").render()).split())
        assert note.startswith("Planned for 2× GeForce RTX 4090 (simulated with --gpus); Launch runs on what this machine has: the CPU (no NVIDIA driver")
        assert "num_processes = 1" in toml and "--multi_gpu" not in str(app.screen.query_one("#command").render())
        # back to the method: change it, and the review follows
        await pilot.press("ctrl+b", "ctrl+b", "ctrl+b", "ctrl+b")
        assert app.screen.index == 2
        await pilot.click("#method-lora")
        for _ in range(4):
            await pilot.press("ctrl+n")
            await pilot.pause(0.1)
        assert app.screen.index == 6
        await _type(pilot, "#run-name", "dog-lora")
        assert app.screen.query_one("#config-path", Input).value == "dog-lora.toml"
        await pilot.press("ctrl+l")
        await pilot.pause(0.1)
        assert not (tmp_path / "runs").exists(), "a family alone cannot be launched"
        await pilot.press("ctrl+s")
        await pilot.pause(0.1)
        saved = tomlkit.parse((tmp_path / "dog-lora.toml").read_text())
        assert saved["method"]["kind"] == "lora" and saved["name"] == "dog-lora"
        assert saved["settings"]["recipe"].startswith("sd15-lora")
        assert saved["schedule"]["max_steps"] == 400
        assert (saved["validation"]["split"], saved["validation"]["every_n_steps"]) == (0.25, 100)
        assert saved["distributed"]["num_processes"] == 1  # not the 2 simulated GPUs: 2 CPU processes with --multi_gpu before


def test_state_sentences_name_the_thing_and_the_fix(tmp_path: Path) -> None:
    state = WizardState(gpus=resolve("1x24GB"), base_dir=tmp_path)
    with pytest.raises(UserError, match="no model given"):
        state.check(0)
    with pytest.raises(UserError, match="does not exist"):
        state.set_model(str(tmp_path / "missing"))
    with pytest.raises(UserError, match="not been scanned"):
        state.check(1)
    with pytest.raises(UserError, match="batch_size must be at least 1"):
        state.set_setting("batch_size", 0)
    with pytest.raises(UserError, match="optimizer must be one of"):
        state.set_setting("optimizer", "sgd")
    state.schedule.update(epochs=0, max_steps=0)
    with pytest.raises(UserError, match="no length"):
        state.check(4)
    with pytest.raises(UserError) as error:
        state.set_prompts("a dog\n--w 512 --h 512")
    assert str(error.value).startswith("prompt line 2 ('--w 512 --h 512') has no prompt text") and "sample prompt" not in str(error.value)


def test_a_missing_family_is_a_question_not_sd1(tmp_path: Path) -> None:
    """Before a model is given nothing is judged, planned or saved as if it were SD1."""
    state = WizardState(gpus=resolve("1x24GB"), base_dir=tmp_path)
    for ask in (state.recipes, state.judge, state.to_config):
        with pytest.raises(UserError, match="family is not known yet; give the model on the Model step"):
            ask()
    before = dict(state.schedule)
    state.method = "dreambooth"
    state.sync_schedule()
    assert state.schedule == before  # nothing to follow yet: no SD1 rates slipped in
    state.set_model("sdxl")
    state.sync_schedule()
    assert state.schedule["learning_rate"] == 1e-6 and state.to_config().family == "sdxl"


def test_core_sentences_are_said_in_the_tuis_terms() -> None:
    from core.gpu import GpuSet
    from core.plan.picker import suggest_when_nothing_fits
    from tui.format import tui_terms

    tips = suggest_when_nothing_fits(
        "sdxl", "lora", resolve("1x8GB"), [], {"gradient_checkpointing": False, "optimizer": "adamw", "cache_latents": False, "batch_size": 4, "resolution": 1024}
    )
    assert tips and all("--" not in tui_terms(tip) for tip in tips), tips
    assert "turn on gradient_checkpointing" in tui_terms(tips[0]) and " = " not in tui_terms(tips[0])
    assert tui_terms("use epoch mode (--epochs N, schedule.max_steps = 0) to keep") == "use epoch mode (max_steps 0 on this step, epochs above 0) to keep"
    state = WizardState(gpus=GpuSet(gpus=[], reason="no NVIDIA driver was found (libnvidia-ml.so.1 is missing)", simulated=False))
    note = next(n for n in _plan_notes(state) if n.startswith("no GPU found"))
    assert "((" not in note and "))" not in note and "--gpus, e.g." not in tui_terms(note)


def _plan_notes(state) -> list[str]:
    import tempfile

    from core.plan.planner import make_plan
    from tests.conftest import make_kohya

    folder = Path(tempfile.mkdtemp())
    make_kohya(folder / "data")
    state.set_model("sd1")
    state.dataset = str(folder / "data")
    state.scan_dataset()
    return make_plan(state.to_config(), state.dataset_scan, state.gpus).notes


def test_family_sets_the_native_resolution_and_the_scan_offers_a_prompt(kohya_dataset, tmp_path: Path) -> None:
    from tui.wizard_state import WizardState

    state = WizardState(gpus=resolve("1x24GB"), base_dir=tmp_path)
    state.set_model("sdxl")
    assert state.settings["resolution"] == 1024
    state.dataset = str(kohya_dataset(((10, "sks dog", 2),)))
    state.scan_dataset()
    assert state.prompts == ["a photo of sks dog --d 1"]


def test_state_follows_prodigys_rate_and_keeps_the_sampler(tmp_path: Path) -> None:
    state = WizardState(gpus=resolve("1x24GB"), base_dir=tmp_path)
    state.set_model("sd1")
    state.set_setting("optimizer", "prodigy")
    assert state.schedule["learning_rate"] == 1.0
    state.set_schedule("learning_rate", "0.5")
    state.set_setting("optimizer", "prodigy")  # unchanged optimizer: the user's rate stays
    assert state.schedule["learning_rate"] == 0.5
    state.set_sampler("euler_a")
    assert state.to_config().section("samples")["sampler"] == "euler_a"
    with pytest.raises(UserError, match="sampler must be one of default, ddim"):
        state.set_sampler("plms")


def test_state_logging_asks_for_wandb_only_when_it_can_run(tmp_path: Path) -> None:
    state = WizardState(gpus=resolve("1x24GB"), base_dir=tmp_path)
    state.set_model("sd1")
    state.set_logging("tensorboard", False)
    assert state.to_config().section("logging")["tensorboard"] is False
    with pytest.raises(UserError, match=r"wandb package is not installed; install it \(pip install wandb\)"):
        state.set_logging("wandb_project", "my-loras")
    assert state.logging["wandb_project"] == ""


def test_the_recipe_step_refuses_bucket_sides_that_do_not_frame_the_resolution(tmp_path: Path) -> None:
    state = WizardState(gpus=resolve("1x24GB"), base_dir=tmp_path)
    state.set_model("sd1")
    state.set_setting("resolution", 64)
    state.set_setting("min_bucket_reso", 256)
    with pytest.raises(UserError, match=r"settings.min_bucket_reso = 256 is larger than settings.resolution = 64; set min_bucket_reso to 64 or less"):
        state.check_recipe()


@pytest.mark.slow
@sync
async def test_thousands_of_broken_files_are_one_line_in_the_problem_list(tmp_path: Path, kohya_dataset) -> None:
    data = kohya_dataset(subsets=((10, "sks dog", 4),))
    for n in range(2000):
        (data / "10_sks dog" / f"empty{n:04d}.png").touch()
    app = _app(tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        await _to_dataset(pilot, data)
        problems = str(app.screen.query_one("#problems").render())
        assert "2,000 files: the file is empty (0 bytes)" in problems and "empty0000.png" in problems
        assert len(problems.splitlines()) < 10, problems
