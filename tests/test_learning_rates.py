"""A new run's learning rate, text-encoder rate, scheduler and warm-up are right for its method."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli.main import main
from core.config import load_config, new_config
from core.families import spec
from core.plan.learning_rates import lr_warnings, schedule_defaults, usual_range
from core.settings import FAMILIES


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.mark.parametrize(
    ("family", "method", "rate"),
    [
        ("sd1", "lora", 1e-4),
        ("sdxl", "lora", 1e-4),
        ("sd1", "dreambooth", 2e-6),
        ("sd2", "finetune", 5e-6),
        ("sdxl", "finetune", 1e-6),
        ("sdxl", "dreambooth", 1e-6),
        ("sd1", "textual_inversion", 5e-4),
    ],
)
def test_a_new_run_starts_at_its_methods_rate(family: str, method: str, rate: float) -> None:
    schedule = new_config("r", "", family, method, [], {}).schedule
    assert schedule["learning_rate"] == rate
    low, high = usual_range(method, "adamw8bit")
    assert low <= rate <= high


def test_every_method_and_family_has_a_default_inside_its_usual_range() -> None:
    for family in FAMILIES:
        for method in spec(family).methods:
            for optimizer in ("adamw", "adamw8bit", "adafactor", "lion8bit"):
                default = schedule_defaults(family, method, optimizer)
                assert lr_warnings(family, method, optimizer, default) == [], (family, method, optimizer)
    assert schedule_defaults("sd1", "lora", "lion8bit")["learning_rate"] == pytest.approx(1e-4 / 3)


def test_lora_trains_its_text_encoder_ten_times_slower_than_the_unet() -> None:
    default = schedule_defaults("sdxl", "lora", "adamw8bit")
    assert default["text_encoder_lr"] == pytest.approx(default["learning_rate"] / 10)


def test_a_run_toml_without_a_learning_rate_takes_the_methods(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text('[model]\npath = "/m"\nfamily = "sd1"\n[method]\nkind = "dreambooth"\n[[dataset.subsets]]\npath = "/d/10_x"\nrepeats = 10\n[schedule]\nepochs = 3\n')
    schedule = load_config(path).schedule
    assert (schedule["learning_rate"], schedule["text_encoder_lr"], schedule["lr_scheduler"], schedule["epochs"]) == (2e-6, 1e-6, "constant", 3)


def _plan(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main(["plan", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_plan_json_carries_the_schedule_it_would_run(kohya_dataset, capsys: pytest.CaptureFixture[str]) -> None:
    data = kohya_dataset(subsets=((10, "sks dog", 4),))
    plan = _plan(capsys, "--model", "sdxl", "--data", str(data), "--method", "finetune", "--recipe", "sdxl-finetune-24gb", "--gpus", "1x24GB")
    # the recipe's own [schedule]: sd-scripts' Adafactor example for a 24 GB SDXL fine-tune
    assert (plan["learning_rate"], plan["lr_scheduler"], plan["lr_warmup_steps"], plan["text_encoder_lr"]) == (4e-7, "constant_with_warmup", 100, None)
    assert not [w for w in plan["warnings"] if "learning_rate" in w]
    lora = _plan(capsys, "--model", "sd1", "--data", str(data), "--gpus", "1x24GB", "--set", "train_text_encoder=true", "--set", "schedule.text_encoder_lr=3e-5")
    assert (lora["learning_rate"], lora["text_encoder_lr"]) == (1e-4, 3e-5)
    same = _plan(capsys, "--model", "sd1", "--data", str(data), "--gpus", "1x24GB", "--set", "train_text_encoder=true", "--set", "schedule.text_encoder_lr=0")
    assert same["text_encoder_lr"] == same["learning_rate"]


def test_plan_warns_when_the_rate_is_far_outside_the_methods_range(kohya_dataset, capsys: pytest.CaptureFixture[str]) -> None:
    data = kohya_dataset(subsets=((10, "sks dog", 4),))
    burnt = _plan(capsys, "--model", "sd1", "--data", str(data), "--method", "dreambooth", "--gpus", "1x24GB", "--set", "schedule.learning_rate=1e-4")
    assert any("schedule.learning_rate = 0.0001 is far above" in w and "burnt" in w and "default is 2e-06" in w for w in burnt["warnings"])
    still = _plan(capsys, "--model", "sd1", "--data", str(data), "--method", "textual_inversion", "--gpus", "1x24GB", "--set", "schedule.learning_rate=1e-6")
    assert any("far below" in w and "barely learn" in w for w in still["warnings"])
    fine = _plan(capsys, "--model", "sd1", "--data", str(data), "--gpus", "1x24GB", "--set", "schedule.learning_rate=3e-4")
    assert not [w for w in fine["warnings"] if "learning_rate" in w]


def test_the_users_rate_survives_a_recipe_and_defaults_follow_it() -> None:
    from core.config import apply_recipe

    config = new_config("r", "", "sdxl", "lora", [], {}, schedule={"learning_rate": 3e-4})
    apply_recipe(config, {"optimizer": "lion8bit"}, "x", {"lr_warmup_steps": 50})
    schedule = config.schedule
    assert schedule["learning_rate"] == 3e-4  # the user's
    assert schedule["text_encoder_lr"] == pytest.approx(1e-5 / 3)  # the default followed Lion
    assert schedule["lr_warmup_steps"] == 50  # the recipe's


def test_the_wizard_follows_the_method_until_the_user_edits_the_rate(tmp_path: Path) -> None:
    from core.gpu import resolve
    from core.plan.picker import rank_recipes
    from core.recipes import load_recipes
    from tui.wizard_state import WizardState

    state = WizardState(gpus=resolve("1x24GB"), base_dir=tmp_path)
    state.family, state.method = "sd1", "dreambooth"
    state.choose_recipe(rank_recipes("sd1", "dreambooth", state.gpus, load_recipes())[0])
    assert state.schedule["learning_rate"] == 2e-6
    state.set_schedule("learning_rate", "1e-6")
    state.method = "lora"
    state.choose_recipe(rank_recipes("sd1", "lora", state.gpus, load_recipes())[0])
    assert state.schedule["learning_rate"] == 1e-6 and state.schedule["text_encoder_lr"] == 1e-5


def test_a_rate_set_from_a_loaded_config_is_not_replaced_by_a_default(tmp_path: Path) -> None:
    from core.gpu import resolve
    from core.plan.picker import rank_recipes
    from core.recipes import load_recipes
    from tui.wizard_state import WizardState

    state = WizardState(gpus=resolve("1x24GB"), base_dir=tmp_path)
    state.family, state.method = "sdxl", "lora"
    state.schedule["learning_rate"] = 4e-4  # what opening a run.toml puts there
    state.choose_recipe(rank_recipes("sdxl", "lora", state.gpus, load_recipes())[0])
    assert state.schedule["learning_rate"] == 4e-4 and state.schedule["text_encoder_lr"] == 1e-5
