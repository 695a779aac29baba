"""The wizard keeps what the user chose: recipes change only memory/speed, names come from the
training subset, the price is saved, keys typed in a burst all land."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import Button, Input

from core.config import new_config
from core.gpu import resolve
from tests.conftest import write_image
from tests.tui_fixtures import sync, until
from tui.app import SdtuiApp
from tui.context import AppContext
from tui.wizard_state import WizardState


def _app(tmp_path: Path) -> SdtuiApp:
    return SdtuiApp(AppContext(runs_dir=tmp_path / "runs", gpu_spec="1x24GB"), start="wizard", theme="textual-dark")


async def _to_dataset(pilot, data: Path) -> None:
    screen = pilot.app.screen
    screen.query_one("#model-path", Input).value = "sd1"
    await pilot.pause(0.05)
    await pilot.press("ctrl+n")
    screen.query_one("#dataset-path", Input).value = str(data)
    await until(pilot, lambda: screen.state.scan is not None)
    await pilot.pause(0.1)


def _lokr_config(data: Path) -> object:
    subsets = [{"path": str(data / "10_sks dog"), "repeats": 10, "token": "sks dog", "is_reg": False}]
    settings = {"lora_type": "lokr", "lora_rank": 16, "lora_targets": "attn", "clip_skip": 2, "optimizer": "prodigy"}
    return new_config("dog", "", "sd1", "lora", subsets, settings)


def test_picking_a_recipe_keeps_the_methods_settings_of_an_opened_config(tmp_path: Path, kohya_dataset) -> None:
    state = WizardState.from_config(_lokr_config(kohya_dataset()), resolve("1x24GB"), tmp_path)
    state.family = "sd1"
    locon = next(f for f in state.recipes() if f.name == "sd15-locon-12gb")
    state.choose_recipe(locon)
    assert (state.settings["lora_type"], state.settings["lora_rank"], state.settings["lora_targets"]) == ("lokr", 16, "attn")
    assert state.settings["clip_skip"] == 2
    # the recipe's memory/speed settings are taken, and the list's estimate is of the settings it gives
    assert (state.settings["optimizer"], state.settings["batch_size"], state.recipe) == ("adamw8bit", 4, "sd15-locon-12gb")
    assert state.judge().estimate.total_bytes == locon.estimate.total_bytes


def test_a_fresh_wizard_starts_the_methods_settings_from_the_recipe_until_the_user_sets_them(tmp_path: Path) -> None:
    state = WizardState(gpus=resolve("1x24GB"), base_dir=tmp_path)
    state.family = "sd1"
    fits = {f.name: f for f in state.recipes()}
    state.choose_recipe(fits["sd15-locon-12gb"])
    assert (state.settings["lora_rank"], state.settings["lora_targets"]) == (32, "all")
    state.set_method_field("lora_rank", "8")
    state.set_setting("clip_skip", 2)
    state.choose_recipe(fits["sd15-lora-8gb"])
    assert (state.settings["lora_rank"], state.settings["lora_targets"], state.settings["clip_skip"]) == (8, "attn_ff", 2)


def test_the_price_per_gpu_hour_is_saved_with_the_config_and_restored(tmp_path: Path, kohya_dataset) -> None:
    from core.config import load_config, save_config

    state = WizardState(gpus=resolve("1x24GB"), base_dir=tmp_path)
    state.set_model("sd1")
    state.dataset = str(kohya_dataset())
    state.scan_dataset()
    state.set_price("$0.79")
    path = save_config(state.to_config(), tmp_path / "dog.toml")
    opened = WizardState.from_config(load_config(path, complete=False), resolve("1x24GB"), tmp_path)
    opened.family = "sd1"
    assert opened.price_per_gpu_hour == 0.79
    assert opened.plan().to_json()["schedule"][0]["cost"] is not None
    opened.set_price("")
    assert load_config(save_config(opened.to_config(), tmp_path / "free.toml")).schedule["price_per_gpu_hour"] == 0.0


def test_the_default_name_and_prompt_come_from_the_subset_trained_most(tmp_path: Path, kohya_dataset) -> None:
    state = WizardState(gpus=resolve("1x24GB"), base_dir=tmp_path)
    state.set_model("sd1")
    state.method = "dreambooth"
    state.dataset = str(kohya_dataset(subsets=((10, "style", 2), (40, "sks dog", 4))))
    state.scan_dataset()
    assert state.default_name() == "sks-dog-dreambooth"
    assert state.prompts == ["a photo of sks dog --d 1"]


def test_textual_inversion_samples_the_placeholder_and_warns_when_no_caption_has_it(tmp_path: Path, kohya_dataset) -> None:
    state = WizardState(gpus=resolve("1x24GB"), base_dir=tmp_path)
    state.set_model("sd1")
    state.dataset = str(kohya_dataset())
    state.scan_dataset()
    state.method = "textual_inversion"
    state.set_method_field("placeholder_token", "<sks>")
    assert state.prompts == ["a photo of <sks> --d 1"]
    warnings = state.plan().warnings
    assert any("no caption contains the placeholder token <sks>" in w for w in warnings)
    state.set_setting("caption_prefix", "<sks>, ")
    assert not any("placeholder token" in w for w in state.plan().warnings)
    state.set_prompts("a painting of <sks>")
    state.set_method_field("placeholder_token", "<dog>")
    assert state.prompts == ["a painting of <sks>"]  # the user's own prompt stays


@pytest.mark.slow
@sync
async def test_the_wizard_offers_a_class_folder_found_inside_the_dataset(tmp_path: Path, kohya_dataset) -> None:
    data = kohya_dataset()
    write_image(data / "reg" / "1_dog" / "dog0.png")
    app = _app(tmp_path)
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.pause(0.2)
        await _to_dataset(pilot, data)
        screen = app.screen
        button = screen.query_one("#use-class-folder", Button)
        assert button.display and "reg/" in str(button.label)
        assert "10_reg" not in str(screen.query_one("#problems").render())
        button.press()
        await until(pilot, lambda: screen.state.scan is not None and screen.state.scan.reg_images == 1)
        await pilot.pause(0.1)
        assert screen.state.reg_dataset == str(data / "reg")
        assert not screen.query_one("#use-class-folder", Button).display


async def _to_recipe(pilot, data: Path) -> None:
    await _to_dataset(pilot, data)
    await pilot.press("ctrl+n")
    await pilot.pause(0.2)
    await pilot.press("ctrl+n")
    await pilot.pause(0.5)


async def _burst(pilot, *keys: tuple[str, str | None]) -> None:
    """Keys posted at once, as a slow SSH link delivers them in one read (Pilot.press waits between keys)."""
    from textual import events

    for key, character in keys:
        pilot.app.post_message(events.Key(key, character))
    await pilot.pause(0.5)


@pytest.mark.slow
@sync
async def test_keys_typed_in_a_burst_right_after_choosing_in_a_dropdown_all_land(tmp_path: Path, kohya_dataset) -> None:
    app = _app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.2)
        await _to_recipe(pilot, kohya_dataset())
        screen = app.screen
        screen.query_one("#v-mixed_precision").focus()
        await pilot.press("enter")
        await pilot.pause(0.3)
        # choose the next precision, then Tab past the checkbox and the optimizer, type 3 into the batch size
        await _burst(pilot, ("down", None), ("enter", "\r"), ("tab", "\t"), ("tab", "\t"), ("tab", "\t"), ("3", "3"))
        assert app.focused is screen.query_one("#v-batch_size")
        assert screen.state.settings["batch_size"] == 3
        assert screen.state.settings["mixed_precision"] != "bf16"
        help_line = str(screen.query_one("#field-help").render())
        assert help_line.startswith("batch_size: ")


@pytest.mark.slow
@sync
async def test_the_help_line_follows_the_focus_wrapped_and_says_more_than_the_name(tmp_path: Path, kohya_dataset) -> None:
    from tui.widgets.setting_field import SettingField

    app = _app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.2)
        await _to_recipe(pilot, kohya_dataset())
        screen = app.screen
        screen.query_one("#v-mixed_precision").focus()
        await pilot.pause(0.2)
        await _burst(pilot, ("tab", "\t"), ("tab", "\t"))
        assert app.focused is screen.query_one("#v-optimizer")
        shown = screen.query_one("#field-help")
        text = str(shown.render())
        assert text.startswith("optimizer: adamw8bit (8-bit states") and "…" not in text
        assert shown.size.height >= 2  # wrapped, not cut
        for field in screen.query(SettingField):
            help_words = field.setting.help.split()
            assert len(help_words) >= 5, f"{field.setting.key}: {field.setting.help}"


@pytest.mark.slow
@sync
async def test_at_80x24_the_dataset_table_and_the_recipe_figures_are_not_cut(tmp_path: Path) -> None:
    from tests.conftest import make_kohya
    from tests.test_tui_snapshots import screen_text

    data = make_kohya(tmp_path / "data", ((40, "sks dog", 2), (10, "style", 2)), (512, 512), True)
    write_image(data / "40_sks dog" / "pano.png", (4000, 200))
    write_image(data / "40_sks dog" / "tiny.png", (16, 16))
    write_image(tmp_path / "reg" / "1_dog" / "d.png", (512, 512))
    app = _app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.2)
        app.screen.query_one("#reg-path", Input).value = str(tmp_path / "reg")
        await _to_dataset(pilot, data)
        await until(pilot, lambda: app.screen.state.scan is not None and app.screen.state.scan.reg_images == 1)
        await pilot.pause(0.3)
        shown = screen_text(app)
        for text in (" buckets", "1_dog (class)", "16×16…4000×200", " 512×512 "):
            assert text in shown, shown
        await pilot.press("ctrl+n")
        await pilot.pause(0.2)
        await pilot.press("ctrl+n")
        await pilot.pause(0.5)
        rows = [line for line in screen_text(app).splitlines() if "▊ " in line and " GiB " in line]
        assert rows and all("img/s" in row for row in rows), rows


def test_an_opened_config_keeps_its_validation_and_mask_folder_through_the_wizard(tmp_path: Path, kohya_dataset) -> None:
    from core.config import load_config, save_config

    data = kohya_dataset()
    (tmp_path / "val").mkdir()
    (tmp_path / "masks").mkdir()
    state = WizardState(gpus=resolve("1x24GB"), base_dir=tmp_path)
    state.set_model("sd1")
    state.dataset = str(data)
    state.scan_dataset()
    config = state.to_config()
    config.set("validation.folder", str(tmp_path / "val"))
    config.set("validation.every_n_steps", 50)
    config.set("dataset.mask_dir", str(tmp_path / "masks"))
    path = save_config(config, tmp_path / "dog.toml")

    opened = WizardState.from_config(load_config(path, complete=False), resolve("1x24GB"), tmp_path)
    opened.family = "sd1"
    again = load_config(save_config(opened.to_config(), tmp_path / "again.toml"), complete=False)

    assert (again.section("validation")["folder"], again.section("validation")["every_n_steps"]) == (str(tmp_path / "val"), 50)
    assert again.section("dataset")["mask_dir"] == str(tmp_path / "masks")


@sync
async def test_the_method_step_offers_only_the_methods_of_the_models_family(tmp_path: Path, kohya_dataset, monkeypatch) -> None:
    from dataclasses import replace

    from textual.widgets import RadioButton

    import tui.wizard_state
    from core.families import spec

    adapters_only = replace(spec("sd1"), methods=("lora", "textual_inversion"))
    monkeypatch.setattr(tui.wizard_state, "spec", lambda name: adapters_only if name == "sd1" else spec(name))
    data = kohya_dataset()
    app = _app(tmp_path)
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.pause(0.2)
        await _to_dataset(pilot, data)
        screen = app.screen
        screen.state.method = "dreambooth"  # chosen before the family was known
        await pilot.press("ctrl+n")
        await pilot.pause(0.2)
        shown = [b.id for b in screen.query(RadioButton) if b.id and b.id.startswith("method-") and b.display and not b.disabled]
        assert shown == ["method-lora", "method-textual_inversion"]
        assert screen.state.method == "lora" and screen.query_one("#method-lora", RadioButton).value
        screen.query_one("#method").focus()
        await pilot.press("down", "enter")
        await pilot.pause(0.1)
        assert screen.state.method == "textual_inversion"  # the arrow keys skip the methods not offered
        await pilot.press("down", "enter")
        await pilot.pause(0.1)
        assert screen.state.method == "lora"


def test_the_recipe_step_shows_the_technique_the_picker_composed_and_its_cost(tmp_path: Path) -> None:
    from tui.steps.recipe import estimate_line, recipe_line

    state = WizardState(gpus=resolve("1x6GB"), base_dir=tmp_path)
    state.family, state.method = "sdxl", "lora"
    fits = [f for f in state.recipes() if f.fits]
    composed = next(f for f in fits if f.changes.get("base_precision"))
    line = recipe_line(composed, state.gpus.smallest.vram_total_bytes).plain
    assert f"{composed.changes['base_precision']} base" in line and "[" in line
    state.choose_recipe(composed)
    # the wizard takes the composed settings: what the list promised is what it judges
    assert state.settings["base_precision"] == composed.changes["base_precision"]
    assert state.judge().fits and state.judge().estimate.total_bytes == composed.estimate.total_bytes
    shown = estimate_line(state.judge(), state.gpus.smallest, state.recipe).plain
    assert "fits" in shown and f"{composed.changes['base_precision']} base" in shown
