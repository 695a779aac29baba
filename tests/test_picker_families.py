"""The big transformer families on the GPUs people have: with their blocks to swap and their
quantizable layers in the spec and the params table, the picker composes a quantized base, streamed
blocks and lighter text encoders into a combination that fits Qwen-Image and FLUX.2 [dev] on
24 GB, SD 3.5 Large on 12 and 16 GB and Z-Image on 8 and 12 GB, and `sdtui plan` prints it."""

from __future__ import annotations

import json

import pytest

from cli.main import main
from core.gpu import parse_spec
from core.memory.data import params
from core.memory.estimator import estimate
from core.plan.fit import RecipeFit, run_shape
from core.plan.picker import pick_recipes
from core.recipes import get_recipe, load_recipes
from core.units import GIB

RECIPES = load_recipes()


def pick(planned: str, gb: int, ram_gb: int) -> list[RecipeFit]:
    """The picker's fitting choices for a LoRA of ``planned`` on one GPU of ``gb`` GB in a machine with ``ram_gb`` of RAM."""
    return pick_recipes(planned, "lora", parse_spec(f"1x{gb}GB"), RECIPES, shape=run_shape("lora", None, ram_bytes=ram_gb * GIB))


@pytest.mark.parametrize(
    ("planned", "gb", "ram_gb"),
    [
        ("qwenimage", 24, 96),  # it reads the transformer and Qwen2.5-VL in bf16: 56 GiB
        ("qwenimage", 16, 96),  # it reads the transformer and Qwen2.5-VL in bf16: 56 GiB
        ("qwenimage", 12, 96),  # it reads the transformer and Qwen2.5-VL in bf16: 56 GiB
        ("flux2-dev", 24, 128),
        ("flux2-klein-9b", 12, 64),
        ("sd35-large", 16, 64),
        ("sd35-large", 12, 64),
        ("zimage", 12, 64),
        ("zimage", 8, 64),
    ],
)
def test_a_lora_fits_the_tier_with_headroom_and_ram_by_composing_techniques(planned: str, gb: int, ram_gb: int) -> None:
    fits = pick(planned, gb, ram_gb)
    assert fits, f"nothing fits {planned} on {gb} GB"
    chosen = fits[0]
    assert chosen.estimate.total_bytes <= 0.9 * gb * GIB
    assert chosen.ram_fits and chosen.ram_need_bytes <= 0.85 * ram_gb * GIB
    # the denoiser's bf16 weights alone do not leave room for training on these cards: something was composed
    assert 2 * params()[planned]["transformer"]["params"] > 0.5 * gb * GIB
    assert chosen.techniques()


def test_flux2_dev_needs_the_ram_to_read_its_32b_transformer() -> None:
    """Each process reads the transformer in bf16 (60 GiB) before quantizing or streaming it: 64 GB of RAM is too little."""
    assert pick("flux2-dev", 24, 64) == []
    assert pick("flux2-dev", 24, 128)


@pytest.mark.parametrize(
    ("recipe", "planned"),
    [
        ("qwenimage-lora-24gb", "qwenimage"),
        ("qwenimage-lora-12gb", "qwenimage"),
        ("flux2-dev-lora-24gb", "flux2-dev"),
        ("sd35-large-lora-16gb", "sd35-large"),
        ("sd35-large-lora-12gb", "sd35-large"),
        ("zimage-lora-12gb", "zimage"),
        ("zimage-lora-8gb", "zimage"),
    ],
)
def test_a_recipe_named_for_a_variant_fits_its_tier_on_that_variant(recipe: str, planned: str) -> None:
    """test_recipes checks a recipe on its family's default model; these are written for a bigger variant."""
    found = get_recipe(recipe)
    tier = int(next(part for part in recipe.split("-") if part.endswith("gb")).removesuffix("gb"))
    assert estimate(planned, "lora", found.settings).fits(tier * GIB, headroom=0.0)
    assert found.settings["base_precision"] != "auto" or found.settings.get("text_encoder_precision", "auto") != "auto"


def test_sdtui_plan_qwen_image_on_24gb_and_96gb_of_ram_prints_a_combination_and_its_cost(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["plan", "--model", "qwen-image", "--method", "lora", "--gpus", "1x24GB", "--ram", "96GB"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "of 24 GiB per GPU: fits" in out and "of 96 GiB: fits" in out
    memory = next(line for line in out.splitlines() if line.startswith("Memory"))
    assert "without them, which would need" in memory and ("slower than" in memory or "as fast as" in memory)
    assert main([*argv, "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["fits"] and plan["vram_estimate_gb"] <= 0.9 * 24 and 0 < plan["ram"]["need_gb"] <= 0.85 * 96
    assert plan["memory"]["slowdown"] is None or plan["memory"]["slowdown"] >= 1.0
