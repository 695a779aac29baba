"""FLUX.1-dev LoRA on the GPUs people have: the picker composes streamed blocks, a quantized
base and lighter text encoders into a combination that fits 8, 12, 16, 24 and 80 GB, and
`sdtui plan` prints it with its estimate, its RAM need and its speed cost."""

from __future__ import annotations

import json
from itertools import pairwise

import pytest

from cli.main import main
from core.gpu import parse_spec
from core.plan.fit import RecipeFit, run_shape
from core.plan.picker import pick_recipes
from core.recipes import load_recipes
from core.units import GIB

RECIPES = load_recipes()
RAM = 64 * GIB
TIERS = (8, 12, 16, 24, 80)


def pick(gb: int, ram: int = RAM) -> list[RecipeFit]:
    """The picker's fitting choices for FLUX.1-dev LoRA on one GPU of ``gb`` GB in a machine with ``ram``."""
    return pick_recipes("flux", "lora", parse_spec(f"1x{gb}GB"), RECIPES, shape=run_shape("lora", None, ram_bytes=ram))


@pytest.mark.parametrize("gb", TIERS)
def test_flux_dev_lora_fits_every_tier_with_headroom_and_ram(gb: int) -> None:
    fits = pick(gb)
    assert fits, f"nothing fits {gb} GB"
    chosen = fits[0]
    assert chosen.fits and chosen.estimate.total_bytes <= 0.9 * gb * GIB
    assert chosen.ram_fits and chosen.ram_need_bytes <= 0.85 * RAM
    # the 12B transformer's bf16 weights alone (22 GiB) do not fit below 48 GB: something was composed
    if gb < 48:
        assert chosen.techniques() and chosen.changes


def test_the_smaller_the_card_the_less_of_the_transformer_stays_on_it() -> None:
    chosen = [pick(gb)[0] for gb in (24, 16, 12, 8)]
    resident = [fit.estimate.breakdown["weights_denoiser"] for fit in chosen]
    assert all(a >= b for a, b in pairwise(resident)) and resident[-1] < resident[0] / 4
    # every combination on 8 GB streams blocks, and T5-XXL (9.5 GB in bf16) is quantized to encode the captions at all
    eight = chosen[-1]
    assert eight.settings["blocks_to_swap"] > 0 and eight.settings["text_encoder_precision"] in ("int8", "nf4")
    assert eight.estimate.host is not None and eight.estimate.host.training.get("swapped_blocks", 0) > 0


def test_on_80gb_nothing_lossy_is_chosen() -> None:
    chosen = pick(80)[0]
    assert chosen.settings["base_precision"] == "auto" and chosen.settings["text_encoder_precision"] == "auto"


def test_a_machine_without_the_ram_to_load_the_transformer_fits_nothing() -> None:
    """Each process reads the 12B transformer in bf16 (22 GiB) before quantizing or streaming it."""
    assert pick(24, ram=16 * GIB) == []
    assert main(["plan", "--model", "flux-dev", "--method", "lora", "--gpus", "1x24GB", "--ram", "16GB", "--json"]) == 0


@pytest.mark.parametrize("gb", TIERS)
def test_sdtui_plan_flux_dev_prints_a_combination_with_its_estimate_ram_and_cost(gb: int, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--model", "flux-dev", "--method", "lora", "--gpus", f"1x{gb}GB", "--ram", "64GB"]) == 0
    out = capsys.readouterr().out
    assert f"of {gb} GiB per GPU: fits" in out
    assert "RAM       " in out and "of 64 GiB: fits" in out
    memory = next(line for line in out.splitlines() if line.startswith("Memory"))
    if gb < 48:
        assert "without them, which would need" in memory and ("slower than" in memory or "as fast as" in memory)
    assert main(["plan", "--model", "flux-dev", "--method", "lora", "--gpus", f"1x{gb}GB", "--ram", "64GB", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["fits"] and plan["ram"]["need_gb"] > 0 and plan["vram_estimate_gb"] <= 0.9 * gb
    assert plan["memory"]["slowdown"] is None or plan["memory"]["slowdown"] >= 1.0
