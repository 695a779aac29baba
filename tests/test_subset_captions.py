"""Per-subset caption options (prefix, suffix, shuffle, kept tags, dropout, tag dropout): the
trainer applies each subset's own, the kohya export writes them per subset, and the wizard's
dataset step shows and edits them (``c``) and keeps an opened config's."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomllib
from textual.widgets import Input, Static

from core.config import load_config, new_config, save_config
from core.gpu import resolve as gpus
from core.kohya import export_kohya
from tests.conftest import write_image
from tests.tui_fixtures import sync, until
from tui.app import SdtuiApp
from tui.context import AppContext
from tui.widgets.subset_captions import SubsetCaptionScreen
from tui.wizard_state import WizardState

SETTINGS = {"resolution": 128, "min_bucket_reso": 64, "max_bucket_reso": 256, "bucket_reso_steps": 64, "caption_prefix": "photo,"}


def _two_subsets(tmp_path: Path) -> tuple[Path, Path]:
    anime, photos = tmp_path / "data" / "2_anime", tmp_path / "data" / "1_photos"
    for folder in (anime, photos):
        write_image(folder / "a.png", (128, 128), (200, 10, 10))
        (folder / "a.txt").write_text("red square")
    return anime, photos


def _config(tmp_path: Path, method: str = "lora"):  # type: ignore[no-untyped-def]
    anime, photos = _two_subsets(tmp_path)
    subsets = [
        {"path": str(anime), "repeats": 2, "token": "", "caption_prefix": "anime,", "caption_suffix": ", best", "caption_dropout_rate": 0.1, "caption_tag_dropout_rate": 0.2},
        {"path": str(photos), "repeats": 1, "token": ""},
    ]
    return load_config(save_config(new_config("r", "/m", "sd1", method, subsets, SETTINGS), tmp_path / "run.toml"))


def test_each_subset_trains_with_its_own_prefix_suffix_and_dropout(tmp_path: Path) -> None:
    from core.train.data.items import build_items, distinct_captions, text_cache_blocker

    config = _config(tmp_path)
    data = build_items(config, config.settings)
    anime, photos = sorted(data.items, key=lambda item: item.subset)
    assert anime.caption == "anime, red square , best" and photos.caption == "photo, red square"
    assert (data.settings_of(anime)["caption_dropout_rate"], data.settings_of(photos)["caption_dropout_rate"]) == (0.1, 0.0)
    assert "" in distinct_captions(data)  # one subset's dropout trains the empty caption too
    assert "tag dropout" in str(text_cache_blocker(data.settings))  # and its tag dropout keeps the text cache off


@pytest.mark.parametrize(("method", "dropout"), [("lora", True), ("textual_inversion", False)])
def test_the_kohya_export_writes_each_subsets_caption_options(tmp_path: Path, method: str, dropout: bool) -> None:
    config = _config(tmp_path, method)
    written = export_kohya(config, tmp_path / "kohya").written
    anime, photos = tomllib.loads(written[0].read_text())["datasets"][0]["subsets"]
    assert (anime["caption_prefix"], anime["caption_suffix"]) == ("anime,", ", best") and "caption_prefix" not in photos
    assert ("caption_dropout_rate" in anime, "caption_tag_dropout_rate" in anime) == (dropout, dropout)


def test_the_wizard_keeps_an_opened_configs_subset_options_and_edits_them(tmp_path: Path) -> None:
    from core.errors import UserError

    config = _config(tmp_path)
    state = WizardState.from_config(config, gpus("1x24GB"), tmp_path)
    state.set_model("sd1")
    anime, photos = (s["path"] for s in config.subsets)
    assert state.subset_captions(anime)["caption_prefix"] == "anime," and state.subset_captions(photos)["caption_prefix"] == "photo,"
    state.set_subset_captions(photos, {"caption_prefix": "photo,", "shuffle_caption": "yes", "keep_tokens": "1", "caption_dropout_rate": "0.05"})
    with pytest.raises(UserError, match="the caption options of 1_photos: caption_dropout_rate must be at most 1; fix the value"):
        state.set_subset_captions(photos, {"caption_dropout_rate": "5"})
    by_path = {s["path"]: s for s in state.to_config().subsets}
    assert by_path[anime]["caption_prefix"] == "anime," and by_path[anime]["caption_tag_dropout_rate"] == 0.2
    own = by_path[photos]
    assert (own["shuffle_caption"], own["keep_tokens"], own["caption_dropout_rate"]) == (True, 1, 0.05)
    assert "caption_prefix" not in own  # the same as [settings]: it follows the recipe step


@pytest.mark.slow
@sync
async def test_the_dataset_step_shows_and_edits_a_subsets_caption_options(tmp_path: Path) -> None:
    anime, _ = _two_subsets(tmp_path)
    app = SdtuiApp(AppContext(runs_dir=tmp_path / "runs", gpu_spec="1x24GB"), start="wizard", theme="textual-dark")
    async with app.run_test(size=(80, 24)) as pilot:
        pilot.app.screen.query_one("#model-path", Input).value = "sd1"
        await pilot.pause(0.05)
        await pilot.press("ctrl+n")
        pilot.app.screen.query_one("#dataset-path", Input).value = str(tmp_path / "data")
        wizard = app.screen
        await until(pilot, lambda: wizard.state.scan is not None)
        await pilot.pause(0.1)
        line = wizard.query_one("#subset-captions", Static)
        assert "captions of 1_photos: as written (c changes them)" in str(line.render())
        wizard.query_one("#subsets").focus()
        await pilot.press("down")
        await pilot.pause(0.05)
        assert "captions of 2_anime" in str(line.render())
        await pilot.press("c")
        await until(pilot, lambda: isinstance(app.screen, SubsetCaptionScreen))
        dialog = app.screen
        dialog.query_one("#opt-caption_prefix", Input).value = "anime,"
        dialog.query_one("#opt-shuffle_caption", Input).value = "maybe"
        dialog.query_one("#opt-caption_prefix", Input).focus()
        await pilot.press("enter")
        await pilot.pause(0.05)
        assert "shuffle_caption must be true or false" in str(dialog.query_one("#options-error", Static).render())
        dialog.query_one("#opt-shuffle_caption", Input).value = "yes"
        await pilot.press("enter")
        await until(pilot, lambda: app.screen is wizard)
        assert "captions of 2_anime: prefix 'anime,', tags shuffled" in str(line.render())
        subset = next(s for s in wizard.state.to_config().subsets if Path(s["path"]).name == "2_anime")
        assert (subset["caption_prefix"], subset["shuffle_caption"]) == ("anime,", True)
        assert anime.is_dir() and (anime / "a.txt").read_text() == "red square"
