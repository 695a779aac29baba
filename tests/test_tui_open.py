"""Open what the user already has: a kohya dataset config (+ prompts) or a run.toml lands in the
wizard filled in; `sdtui import-kohya` writes the run.toml from the same files."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.main import main
from core.config import load_config
from tests.tui_fixtures import sync, until
from tui.app import SdtuiApp
from tui.context import AppContext
from tui.screens.home import HomeScreen
from tui.screens.open_config import OpenConfigScreen
from tui.screens.wizard import WizardScreen


def _kohya_files(tmp_path: Path, kohya_dataset) -> tuple[Path, Path, Path]:
    data = kohya_dataset(subsets=((10, "sks dog", 4), (3, "dog", 2)))
    config = tmp_path / "kohya" / "dataset_config.toml"
    config.parent.mkdir()
    config.write_text(
        '[general]\nshuffle_caption = true\ncaption_extension = ".txt"\n\n'
        "[[datasets]]\nresolution = 640\nbatch_size = 2\n\n"
        f'  [[datasets.subsets]]\n  image_dir = "{data / "10_sks dog"}"\n  num_repeats = 7\n  class_tokens = "sks dog"\n\n'
        f'  [[datasets.subsets]]\n  image_dir = "{data / "3_dog"}"\n  num_repeats = 1\n  is_reg = true\n'
    )
    prompts = tmp_path / "kohya" / "prompts.txt"
    prompts.write_text("# sample prompts\na photo of sks dog --w 640 --h 640 --d 5\n")
    return config, prompts, data


async def _open(pilot, config: Path, prompts: Path | None = None) -> None:
    await pilot.press("o")
    await until(pilot, lambda: isinstance(pilot.app.screen, OpenConfigScreen))
    pilot.app.screen.query_one("#config-file").value = str(config)
    pilot.app.screen.query_one("#prompts-file").value = str(prompts or "")
    await pilot.press("enter")


@pytest.mark.slow
@sync
async def test_a_kohya_dataset_config_and_its_prompts_open_in_the_wizard(tmp_path: Path, kohya_dataset) -> None:
    config, prompts, data = _kohya_files(tmp_path, kohya_dataset)
    app = SdtuiApp(AppContext(runs_dir=tmp_path / "runs", gpu_spec="1x24GB"), theme="textual-dark")
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, HomeScreen))
        await _open(pilot, config, prompts)
        await until(pilot, lambda: isinstance(app.screen, WizardScreen))
        wizard = app.screen
        assert wizard.index == 0, "the kohya files name no model: the wizard asks for it first"
        state = wizard.state
        assert state.prompts == ["a photo of sks dog --w 640 --h 640 --d 5"]
        assert state.settings["resolution"] == 640 and state.settings["batch_size"] == 2 and state.settings["shuffle_caption"]
        scan = state.dataset_scan
        assert [(s.path, s.repeats, s.is_reg) for s in scan.subsets] == [(str(data / "10_sks dog"), 7, False), (str(data / "3_dog"), 1, True)]
        wizard.query_one("#model-path").value = "sd1"
        await pilot.pause(0.1)
        await pilot.press("ctrl+n")
        assert wizard.index == 1 and wizard.error is None, wizard.error
        assert wizard.query_one("#dataset-path").value == str(data / "10_sks dog")
        run = state.to_config()
        assert [(s["repeats"], s["token"], s["is_reg"]) for s in run.subsets] == [(7, "sks dog", False), (1, "dog", True)]
        assert run.prompts == ["a photo of sks dog --w 640 --h 640 --d 5"] and run.settings["resolution"] == 640


@pytest.mark.slow
@sync
async def test_a_run_toml_opens_on_review_and_a_bad_file_keeps_the_dialog_open(tmp_path: Path, kohya_dataset) -> None:
    config, prompts, _ = _kohya_files(tmp_path, kohya_dataset)
    run_toml = tmp_path / "mine.toml"
    assert main(["import-kohya", str(config), "--prompts", str(prompts), "--model", "sd1", str(run_toml)]) == 0
    app = SdtuiApp(AppContext(runs_dir=tmp_path / "runs", gpu_spec="1x24GB"), theme="textual-dark")
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, HomeScreen))
        await _open(pilot, tmp_path / "nothing.toml")
        dialog = app.screen
        await until(pilot, lambda: "is not a file" in str(dialog.query_one("#answer-error").render()))
        assert isinstance(app.screen, OpenConfigScreen)
        await _open_again(pilot, dialog, run_toml, prompts)
        await until(pilot, lambda: "prompts file goes with a kohya dataset config" in str(dialog.query_one("#answer-error").render()))
        await _open_again(pilot, dialog, run_toml, None)
        await until(pilot, lambda: isinstance(app.screen, WizardScreen))
        wizard = app.screen
        assert wizard.index == 6, "everything checks out: the wizard lands on Review"
        assert wizard.state.config_path == str(run_toml)
        assert "repeats = 7" in wizard.query_one("#toml").text


@sync
async def test_a_burst_with_tab_fills_both_fields(tmp_path: Path) -> None:
    from textual import events

    app = SdtuiApp(AppContext(runs_dir=tmp_path / "runs", gpu_spec="1x24GB"), theme="textual-dark")
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, HomeScreen))
        await pilot.press("o")
        await until(pilot, lambda: isinstance(app.screen, OpenConfigScreen))
        await pilot.pause(0.2)
        for key, character in (("a", "a"), ("b", "b"), ("tab", "\t"), ("c", "c"), ("backspace", "\x7f"), ("d", "d")):
            app.post_message(events.Key(key, character))
        await pilot.pause(0.3)
        assert (app.screen.query_one("#config-file").value, app.screen.query_one("#prompts-file").value) == ("ab", "d")


async def _open_again(pilot, dialog, config: Path, prompts: Path | None) -> None:
    dialog.query_one("#config-file").value = str(config)
    dialog.query_one("#prompts-file").value = str(prompts or "")
    dialog.query_one("#config-file").focus()
    await pilot.press("enter")


def test_import_kohya_writes_a_run_toml_that_plans(tmp_path: Path, kohya_dataset, capsys: pytest.CaptureFixture[str]) -> None:
    config, prompts, data = _kohya_files(tmp_path, kohya_dataset)
    out = tmp_path / "out" / "sks.toml"
    assert main(["import-kohya", str(config), "--prompts", str(prompts), "--model", "sd1", str(out)]) == 0
    written = out.read_text()
    assert written.splitlines()[0] == f"# sdtui run config; start it with: sdtui train {out}"
    run = load_config(out, complete=False)
    assert [(s["path"], s["repeats"], s["token"], s["is_reg"]) for s in run.subsets] == [(str(data / "10_sks dog"), 7, "sks dog", False), (str(data / "3_dog"), 1, "", True)]
    assert run.settings["resolution"] == 640 and run.prompts == ["a photo of sks dog --w 640 --h 640 --d 5"]
    assert main(["plan", str(out), "--gpus", "1x24GB"]) == 0
    capsys.readouterr()
    assert main(["import-kohya", str(config), str(tmp_path / "no-model.toml")]) == 0
    assert "has no model yet" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("problem", "sentence"),
    [
        ("missing", "does not exist; check the path"),
        ("bad-prompt", "line 1: sample prompt 'a --w 63': --w must be a multiple of 8"),
    ],
)
def test_import_kohya_refuses_bad_input_in_one_sentence(tmp_path: Path, kohya_dataset, capsys, problem: str, sentence: str) -> None:
    config, prompts, _ = _kohya_files(tmp_path, kohya_dataset)
    if problem == "missing":
        config = tmp_path / "nowhere.toml"
    else:
        prompts.write_text("a --w 63\n")
    assert main(["import-kohya", str(config), "--prompts", str(prompts), str(tmp_path / "x.toml")]) == 2
    err = capsys.readouterr().err
    assert sentence in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
