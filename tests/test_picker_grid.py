"""The picker composes a combination that fits, or the plan says that nothing fits, shows the
closest combination and what it lacks: swept over SD1/SDXL × LoRA/DreamBooth/fine-tune × 8-80 GB,
with and without class images (where 12 of these 84 fixed-recipe picks did not fit by the plan's own estimate)."""

from __future__ import annotations

import pytest

from core.gpu import parse_spec
from core.plan.fit import run_shape
from core.plan.picker import pick_recipes, rank_recipes
from core.plan.planner import make_plan
from core.recipes import load_recipes
from tests.test_fit_agreement import config_for, memory_scan

RECIPES = load_recipes()
GRID = [(family, method, gb, classes) for family in ("sd1", "sdxl") for method in ("lora", "dreambooth", "finetune") for gb in (8, 12, 16, 24, 40, 48, 80) for classes in (0, 50)]


@pytest.mark.parametrize(("family", "method", "gb", "classes"), GRID)
def test_every_pick_fits_or_the_plan_shows_the_closest_and_what_it_lacks(family: str, method: str, gb: int, classes: int) -> None:
    gpus = parse_spec(f"1x{gb}GB")
    scan = memory_scan(classes)
    shape = run_shape(method, classes)
    picked = pick_recipes(family, method, gpus, RECIPES, shape=shape)
    chosen = (picked or rank_recipes(family, method, gpus, RECIPES, shape=shape))[0]
    plan = make_plan(config_for(family, method, chosen.recipe, chosen.changes, scan, gpus), scan, gpus)
    assert plan.vram_estimate_bytes == chosen.estimate.total_bytes
    if picked:
        assert chosen.fits and plan.fits
        assert plan.vram_estimate_bytes <= 0.9 * gb * 2**30
        assert not [w for w in plan.warnings if "does not fit" in w]
    else:
        assert plan.fits is False
        closest = next(w for w in plan.warnings if "nothing fits on this GPU" in w)
        assert "the closest combination" in closest and "lacks" in closest and "GiB of VRAM" in closest


def test_sd15_finetune_on_16gb_no_longer_gets_the_24gb_recipe_at_batch_8() -> None:
    """The reported pick: sd15-finetune-24gb at batch 8 (17.9 GiB) on a 16 GB card."""
    gpus = parse_spec("1x16GB")
    chosen = pick_recipes("sd1", "finetune", gpus, RECIPES, shape=run_shape("finetune", 0))[0]
    assert chosen.fits and chosen.estimate.gb <= 0.9 * 16
    if chosen.name == "sd15-finetune-24gb":
        assert chosen.changes and chosen.settings["batch_size"] < 8
        assert "batch_size 8 →" in chosen.explain()


def test_a_quantized_base_opens_the_6gb_tier_for_sdxl_lora() -> None:
    chosen = pick_recipes("sdxl", "lora", parse_spec("1x6GB"), RECIPES, shape=run_shape("lora", 0))[0]
    assert chosen.settings["base_precision"] in ("fp8", "fp8_scaled", "int8", "nf4")
    assert chosen.techniques().endswith("base") and "fits" in chosen.explain()


def test_nothing_lossy_where_the_bf16_base_fits_as_fast() -> None:
    for fit in pick_recipes("sdxl", "lora", parse_spec("1xH100"), RECIPES, shape=run_shape("lora", 0)):
        assert fit.changes.get("base_precision") is None, fit.name
