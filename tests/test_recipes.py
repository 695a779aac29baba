"""core.recipes and recipes/*.toml: loading, validation errors a user can act on, coverage."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import UserError
from core.memory import estimate
from core.recipes import RecipeError, get_recipe, load_recipes, shipped_dir
from core.settings import SETTINGS

GB = 2**30
REPO = Path(__file__).resolve().parents[1]
GOOD = """name = "mine"
title = "Mine"
families = ["sd1"]
methods = ["lora"]
summary = "A test recipe."

[settings]
optimizer = "adamw8bit"
batch_size = 2
"""


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text(text)
    return path


def test_shipped_recipes_load_and_cover_families_methods_and_tiers() -> None:
    recipes = load_recipes()
    assert len(recipes) >= 16
    pairs = {(f, m) for r in recipes for f in r.families for m in r.methods}
    for family in ("sd1", "sdxl"):
        for method in ("lora", "dreambooth", "finetune", "textual_inversion"):
            assert (family, method) in pairs, (family, method)
    assert {("sd2", "lora"), ("sd2", "finetune"), ("sd2", "textual_inversion")} <= pairs
    for recipe in recipes:
        assert Path(str(recipe.path)).parent == REPO / "recipes" and recipe.path.name == f"{recipe.name}.toml"
        assert set(recipe.settings) <= set(SETTINGS)
        assert "\n" not in recipe.summary


def test_shipped_recipes_are_the_recipes_package_data() -> None:
    import recipes

    assert Path(str(shipped_dir())) == Path(recipes.__file__).parent
    assert sorted(p.name for p in shipped_dir().iterdir() if p.name.endswith(".toml")) == sorted(p.name for p in (REPO / "recipes").glob("*.toml"))


def test_every_shipped_recipe_fits_the_card_its_name_promises() -> None:
    for recipe in load_recipes():
        tier = [part for part in recipe.name.split("-") if part.endswith("gb")]
        if not tier:
            continue
        vram = int(tier[0].removesuffix("gb")) * GB
        for family in recipe.families:
            for method in recipe.methods:
                found = estimate(family, method, recipe.settings)
                assert found.fits(vram, headroom=0.0), (recipe.name, family, method, round(found.gb, 1))


def test_resolved_settings_fill_defaults_and_name_the_recipe() -> None:
    recipe = get_recipe("sdxl-lora-12gb")
    resolved = recipe.resolved_settings()
    assert set(resolved) == set(SETTINGS)
    assert resolved["recipe"] == "sdxl-lora-12gb" and resolved["resolution"] == 1024
    assert recipe.suits("sdxl", "lora") and not recipe.suits("sd1", "lora")


def test_unknown_recipe_lists_the_names() -> None:
    with pytest.raises(UserError, match="sdxl-lora-12gb"):
        get_recipe("nope")


def test_env_folder_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "mine", GOOD)
    monkeypatch.setenv("SDTUI_RECIPES_DIR", str(tmp_path))
    assert [r.name for r in load_recipes()] == ["mine"]
    assert get_recipe("mine").settings == {"optimizer": "adamw8bit", "batch_size": 2}


def test_unknown_setting_names_file_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, "bad", GOOD + "learning_rat = 1\n")
    with pytest.raises(RecipeError, match=rf"{path}.*unknown setting 'learning_rat'.*mixed_precision"):
        load_recipes(tmp_path)


def test_bad_value_names_file_key_and_allowed_values(tmp_path: Path) -> None:
    write(tmp_path, "bad", GOOD.replace('"adamw8bit"', '"sgd"'))
    with pytest.raises(RecipeError, match=r"bad\.toml.*'optimizer'.*adamw, adamw8bit, lion, lion8bit, adafactor"):
        load_recipes(tmp_path)


def test_wrong_type_is_rejected(tmp_path: Path) -> None:
    write(tmp_path, "bad", GOOD.replace("batch_size = 2", 'batch_size = "two"'))
    with pytest.raises(RecipeError, match="batch_size must be a whole number"):
        load_recipes(tmp_path)


def test_invalid_toml_names_file_and_line(tmp_path: Path) -> None:
    write(tmp_path, "broken", GOOD.replace("batch_size = 2", "batch_size = = 2"))
    with pytest.raises(RecipeError, match=r"broken\.toml: invalid TOML at line 9"):
        load_recipes(tmp_path)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('families = ["sd1"]', 'families = ["sd3"]', "'families' must be a non-empty list of sd1, sd2, sdxl"),
        ('methods = ["lora"]', "methods = []", "'methods' must be a non-empty list"),
        ('summary = "A test recipe."\n', "", "missing summary"),
    ],
)
def test_header_errors(tmp_path: Path, old: str, new: str, message: str) -> None:
    write(tmp_path, "bad", GOOD.replace(old, new))
    with pytest.raises(RecipeError, match=message):
        load_recipes(tmp_path)


def test_duplicate_names_are_an_error(tmp_path: Path) -> None:
    write(tmp_path, "a", GOOD)
    write(tmp_path, "b", GOOD)
    with pytest.raises(RecipeError, match="already used"):
        load_recipes(tmp_path)


def test_missing_folder_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="SDTUI_RECIPES_DIR"):
        load_recipes(tmp_path / "absent")


def test_a_recipe_may_set_its_learning_rates_and_nothing_else_of_the_schedule(tmp_path: Path) -> None:
    write(tmp_path, "mine", GOOD + "\n[schedule]\nlearning_rate = 3e-4\nlr_warmup_steps = 50\n")
    assert load_recipes(tmp_path)[0].schedule == {"learning_rate": 3e-4, "lr_warmup_steps": 50}
    write(tmp_path, "mine", GOOD + "\n[schedule]\nepochs = 3\n")
    with pytest.raises(RecipeError, match=r"mine\.toml: \[schedule\] may set only learning_rate, text_encoder_lr, lr_scheduler, lr_warmup_steps"):
        load_recipes(tmp_path)
    write(tmp_path, "mine", GOOD + "\n[schedule]\nlearning_rate = -1\n")
    with pytest.raises(RecipeError, match=r"mine\.toml: schedule 'learning_rate' = -1 is invalid"):
        load_recipes(tmp_path)
