"""The dataset step's caption dialog, driven with the Pilot on the tiny Florence-2 and the tiny WD14
tagger: progress and a preview, generated captions shown and counted, one caption edited into the
layer, the table within 80 columns, the tagger's thresholds and exclusions, the dataset byte-identical."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import Button, DataTable, Input, Select, Static

from core.captions.layer import CaptionerKey, CaptionLayer, content_hash
from tests.test_captions import _tree
from tests.tui_fixtures import sync, until
from tui.app import SdtuiApp
from tui.context import AppContext
from tui.widgets.caption_dialog import CaptionScreen


async def _type(pilot, selector: str, text: str) -> None:
    pilot.app.screen.query_one(selector, Input).value = text
    await pilot.pause(0.05)


@pytest.mark.slow
@sync
async def test_caption_dialog_captions_previews_and_edits_without_touching_the_dataset(
    tmp_path: Path,
    kohya_dataset,
    tiny_captioners: dict[str, Path],
) -> None:
    data = kohya_dataset(subsets=((10, "sks dog", 3),), captions=False)
    before = _tree(data)
    app = SdtuiApp(AppContext(runs_dir=tmp_path / "runs", gpu_spec="1x24GB"), start="wizard", theme="textual-dark")
    async with app.run_test(size=(110, 40)) as pilot:
        await _type(pilot, "#model-path", "sd1")
        await pilot.press("ctrl+n")
        await _type(pilot, "#dataset-path", str(data))
        wizard = app.screen
        await until(pilot, lambda: wizard.state.scan is not None)
        await pilot.pause(0.1)
        button = wizard.query_one("#caption-images", Button)
        assert button.display and "Caption the 3 images without captions" in str(button.label)
        assert "0 of 3 images have a caption; 3 without one" in str(wizard.query_one("#caption-stats", Static).render())
        button.press()
        await until(pilot, lambda: isinstance(app.screen, CaptionScreen))
        dialog = app.screen
        await pilot.pause(0.2)
        await _type(pilot, "#caption-model", str(tiny_captioners["florence2"]))
        dialog.query_one("#caption-start", Button).press()
        status = dialog.query_one("#caption-status", Static)
        await until(pilot, lambda: "Done" in str(status.render()) or "red" in str(status.content), timeout=120)
        assert "Done: 3 captioned" in str(status.render()), str(status.render())
        preview = str(dialog.query_one("#caption-preview", Static).render())
        assert preview.count(".png: ") == 3
        table = dialog.query_one("#caption-table", DataTable)
        assert [str(table.get_row_at(i)[1]).strip() for i in range(3)] == ["generated"] * 3
        table.focus()
        await pilot.press("e")
        await pilot.pause(0.1)
        await _type(pilot, "#answer", "a dog, my words")
        await pilot.press("enter")
        await pilot.pause(0.1)
        assert str(table.get_row_at(0)[1]).strip() == "edited"
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is wizard)
        await until(pilot, lambda: wizard.state.scan is not None and wizard.state.scan.subsets[0].captions_generated == 3)
        first = sorted(data.rglob("*.png"))[0]
        assert CaptionLayer().caption(content_hash(first)).text == "a dog, my words"
        assert "3 of 3 images have a caption (3 generated)" in str(wizard.query_one("#caption-stats", Static).render())
        assert "(3 gen.)" in str(wizard.query_one("#subsets", DataTable).get_row_at(0)[3])
    assert _tree(data) == before


@sync
async def test_the_caption_key_works_from_the_path_field_without_typing_into_it(tmp_path: Path, kohya_dataset) -> None:
    data = kohya_dataset(subsets=((10, "sks dog", 3),), captions=False)
    app = SdtuiApp(AppContext(runs_dir=tmp_path / "runs", gpu_spec="1x24GB"), start="wizard", theme="textual-dark")
    async with app.run_test(size=(80, 24)) as pilot:
        await _type(pilot, "#model-path", "sd1")
        await pilot.press("ctrl+n")
        await _type(pilot, "#dataset-path", str(data))
        wizard = app.screen
        await until(pilot, lambda: wizard.state.scan is not None)
        wizard.query_one("#dataset-path", Input).focus()
        await pilot.pause(0.1)
        assert "(ctrl+o)" in str(wizard.query_one("#caption-images", Button).label)
        await pilot.press("ctrl+o")  # a letter key would be typed into the focused path instead
        await until(pilot, lambda: isinstance(app.screen, CaptionScreen))
        assert wizard.query_one("#dataset-path", Input).value == str(data)


async def _open_dialog(pilot, data: Path) -> CaptionScreen:
    await _type(pilot, "#model-path", "sd1")
    await pilot.press("ctrl+n")
    await _type(pilot, "#dataset-path", str(data))
    wizard = pilot.app.screen
    await until(pilot, lambda: wizard.state.scan is not None)
    await pilot.pause(0.1)
    wizard.query_one("#caption-images", Button).press()
    await until(pilot, lambda: isinstance(pilot.app.screen, CaptionScreen))
    await pilot.pause(0.2)
    return pilot.app.screen


@sync
async def test_the_caption_table_fits_80_columns_with_long_names_and_captions(tmp_path: Path, kohya_dataset) -> None:
    data = kohya_dataset(subsets=((10, "sks dog", 2),), captions=False)
    for index, image in enumerate(sorted(data.rglob("*.png"))):
        renamed = image.with_name(f"IMG_20240101_1234{index}_a_very_long_camera_name.png")
        image.rename(renamed)
        CaptionLayer().put(content_hash(renamed), CaptionerKey("florence2", "m"), "a long generated caption " * 8)
    app = SdtuiApp(AppContext(runs_dir=tmp_path / "runs", gpu_spec="1x24GB"), start="wizard", theme="textual-dark")
    async with app.run_test(size=(80, 24)) as pilot:
        dialog = await _open_dialog(pilot, data)
        table = dialog.query_one("#caption-table", DataTable)
        assert table.virtual_size.width <= table.scrollable_content_region.width, "no column is cut at the right"
        name, source, caption = (str(cell) for cell in table.get_row_at(0))
        assert name.strip().startswith("IMG_2024") and "…" in name and name.strip().endswith("name.png")
        assert source.strip() == "generated" and caption.endswith("…") and len(caption) > 20


@pytest.mark.slow
@sync
async def test_the_tagger_is_chosen_with_its_thresholds_and_exclusions_in_the_dialog(tmp_path: Path, kohya_dataset, tiny_captioners: dict[str, Path]) -> None:
    data = kohya_dataset(subsets=((10, "sks dog", 2),), captions=False)
    before = _tree(data)
    app = SdtuiApp(AppContext(runs_dir=tmp_path / "runs", gpu_spec="1x24GB"), start="wizard", theme="textual-dark")
    async with app.run_test(size=(80, 24)) as pilot:
        dialog = await _open_dialog(pilot, data)
        dialog.query_one("#captioner", Select).value = "wd14"
        await until(pilot, lambda: not dialog.query_one("#prompt-field").display and dialog.query_one("#tag-thresholds", Input).display, timeout=10)
        assert dialog.query_one("#caption-model", Input).value == "SmilingWolf/wd-vit-tagger-v3"
        await _type(pilot, "#caption-model", str(tiny_captioners["wd14"]))
        await _type(pilot, "#tag-thresholds", "high")
        dialog.query_one("#caption-start", Button).press()
        status = dialog.query_one("#caption-status", Static)
        await until(pilot, lambda: "the thresholds 'high' are not one or two numbers" in str(status.render()), timeout=10)
        await _type(pilot, "#tag-thresholds", "0 0")
        await _type(pilot, "#tag-exclude", "toy, simple_background")
        dialog.query_one("#caption-start", Button).press()
        await pilot.pause(0.1)
        await until(pilot, lambda: "Done" in str(status.render()) or "red" in str(status.content), timeout=120)
        assert "Done: 2 captioned" in str(status.render()), str(status.render())
        await until(pilot, lambda: not dialog.query_one("#caption-start", Button).disabled, timeout=30)
        table = dialog.query_one("#caption-table", DataTable)
        for row in range(2):
            image = Path(str(table.coordinate_to_cell_key((row, 0)).row_key.value))
            tags = CaptionLayer().caption(content_hash(image)).text.split(", ")
            assert len(tags) == 20 and "toy" not in tags and "simple background" not in tags and "sensitive" not in tags
    assert _tree(data) == before
