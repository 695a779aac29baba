"""FLUX.1-dev LoRA on the GPUs people have: the picker composes a quantized base, streamed
blocks and lighter text encoders into a combination that fits 8, 12, 16, 24 and 80 GB, and
`sdtui plan` prints it with its estimate, its RAM need and its speed cost."""

from __future__ import annotations

import json
from itertools import pairwise

import pytest

from cli.main import main
from core.gpu import parse_spec
from core.plan.picker import RecipeFit, pick_recipes, run_shape
from core.recipes import load_recipes
from core.units import GIB

RECIPES = load_recipes()
RAM = 64 * GIB


def pick(gb: int) -> RecipeFit:
    """The picker's choice for FLUX.1-dev LoRA on one GPU of ``gb`` GB in a 64 GB machine."""
    fits = pick_recipes("flux", "lora", parse_spec(f"1x{gb}GB"), RECIPES, shape=run_shape("lora", None, ram_bytes=RAM))
    assert fits, f"nothing fits {gb} GB"
    return fits[0]


@pytest.mark.parametrize("gb", [8, 12, 16, 24, 80])
def test_flux_dev_lora_fits_every_tier_with_headroom_and_ram(gb: int) -> None:
    chosen = pick(gb)
    assert chosen.fits and chosen.estimate.total_bytes <= 0.9 * gb * GIB
    assert chosen.ram_fits and chosen.ram_need_bytes <= 0.85 * RAM


def test_80gb_trains_the_bf16_transformer_as_written() -> None:
    chosen = pick(80)
    assert chosen.settings["base_precision"] == "auto" and chosen.settings["blocks_to_swap"] == 0
    assert not chosen.techniques()


def test_24gb_stores_the_transformer_in_8_bits_without_streaming() -> None:
    chosen = pick(24)
    assert chosen.settings["base_precision"] in ("fp8", "fp8_scaled", "int8")
    assert chosen.settings["blocks_to_swap"] == 0


def test_16gb_and_12gb_quantize_and_stream_more_as_the_card_shrinks() -> None:
    sixteen, twelve = pick(16), pick(12)
    for chosen in (sixteen, twelve):
        assert chosen.settings["base_precision"] in ("fp8", "fp8_scaled", "int8", "nf4")
    assert (twelve.settings["blocks_to_swap"], twelve.settings["base_precision"] == "nf4") >= (sixteen.settings["blocks_to_swap"], sixteen.settings["base_precision"] == "nf4")
    assert twelve.ram_need_bytes >= sixteen.ram_need_bytes - GIB


def test_8gb_needs_a_4_bit_base_streamed_blocks_and_a_quantized_t5() -> None:
    chosen = pick(8)
    assert chosen.settings["base_precision"] == "nf4" and chosen.settings["blocks_to_swap"] > 0
    # T5-XXL in bf16 (9.5 GB) cannot even encode the captions on 8 GB
    assert chosen.settings["text_encoder_precision"] in ("int8", "nf4")


def test_the_smaller_the_card_the_slower_the_step() -> None:
    speeds = [pick(gb).images_per_second or 0 for gb in (80, 24, 16, 12, 8)]
    assert all(a >= b for a, b in pairwise(speeds)) and speeds[-1] > 0


@pytest.mark.parametrize("gb", [8, 12, 16, 24, 80])
def test_sdtui_plan_flux_dev_prints_a_combination_with_its_estimate_ram_and_cost(gb: int, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--model", "flux-dev", "--method", "lora", "--gpus", f"1x{gb}GB", "--ram", "64GB"]) == 0
    out = capsys.readouterr().out
    assert f"of {gb} GiB per GPU: fits" in out
    assert "RAM       " in out and "of 64 GiB: fits" in out
    memory = next(line for line in out.splitlines() if line.startswith("Memory"))
    if gb < 80:
        assert " base" in memory and "slower than without them" in memory
    assert main(["plan", "--model", "flux-dev", "--method", "lora", "--gpus", f"1x{gb}GB", "--ram", "64GB", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["fits"] and plan["ram"]["need_gb"] > 0 and plan["vram_estimate_gb"] <= 0.9 * gb
