"""The picker's choice in words: a composed recipe is named as what it is (``composed for 1 × 12 GiB
from flux-lora-48gb: …``), the recipe written for the card is named with why the chosen one ranks
above it, and a quantized store says what the lossless combination lacks. The choice between a
bf16 base with many blocks swapped and a quantized base with fewer is the one LOSS_PRICE and the
throughput model explain."""

from __future__ import annotations

import re

import pytest

from cli.main import main
from core.gpu import parse_spec
from core.plan.choice import choose, written_for_card
from core.plan.compose import compose
from core.plan.fit import LOSS_PRICE, run_shape
from core.plan.picker import rank_recipes
from core.plan.throughput import technique_cost
from core.recipes import get_recipe, load_recipes
from core.units import GIB
from tests.tui_fixtures import sync, until

RECIPES = load_recipes()
RAM = 64 * GIB


def plan_text(gb: int, capsys: pytest.CaptureFixture[str], family: str = "flux-dev") -> str:
    assert main(["plan", "--model", family, "--method", "lora", "--gpus", f"1x{gb}GB", "--ram", "64GB"]) == 0
    return capsys.readouterr().out


def line(out: str, head: str) -> list[str]:
    return [row for row in out.splitlines() if row.startswith(head)]


def test_a_composed_recipe_is_named_as_composed_for_the_card_with_the_card_s_own_recipe_and_why(capsys: pytest.CaptureFixture[str]) -> None:
    out = plan_text(12, capsys)
    assert line(out, "Recipe")[0].startswith("Recipe    composed for 1 × 12 GiB from flux-lora-48gb: int8 text encoders, 52 blocks swapped (bf16, adamw8bit")
    why = line(out, "Choice")
    assert why[0].startswith("Choice    chosen over flux-lora-12gb, the heaviest recipe that fits as written (fp8_scaled base, int8 text encoders, 44 blocks swapped: 10.1 GiB")
    assert "about as fast" in why[0] and "with the base in bf16 instead of fp8_scaled" in why[0]
    # the int8 T5 is lossy too: the plan says what the lossless encoders would cost
    assert why[1] == "Choice    int8 text encoders: without them it fits only at 384 px (47 blocks swapped)"


def test_on_8gb_the_quantized_encoders_are_explained_by_what_the_lossless_ones_lack(capsys: pytest.CaptureFixture[str]) -> None:
    out = plan_text(8, capsys)
    assert "composed for 1 × 8 GiB from flux-lora-48gb: nf4 text encoders, 54 blocks swapped, batch 2 → 1" in line(out, "Recipe")[0]
    why = line(out, "Choice")
    assert "chosen over flux-lora-8gb" in why[0] and "it trains at 1024 px instead of 512" in why[0] and "slower" in why[0]
    assert why[1].startswith("Choice    nf4 text encoders: without them nothing fits, the closest (56 blocks swapped) lacks ") and "GiB of VRAM" in why[1]


def test_a_recipe_as_written_is_named_alone_without_a_choice_line(capsys: pytest.CaptureFixture[str]) -> None:
    out = plan_text(80, capsys)
    assert line(out, "Recipe")[0].startswith("Recipe    flux-lora-80gb-fast: bf16, adamw,")
    assert not line(out, "Choice")
    assert main(["plan", "--model", "flux-dev", "--method", "lora", "--gpus", "1x12GB", "--recipe", "flux-lora-12gb", "--ram", "64GB", "--json"]) == 0
    assert '"choice": {}' in capsys.readouterr().out  # a recipe named with --recipe is not a choice


@pytest.mark.parametrize("gb", [16, 24])
def test_flux_dev_lora_on_16_and_24gb_keeps_the_bf16_base_and_swaps_more_blocks_and_says_why(gb: int, capsys: pytest.CaptureFixture[str]) -> None:
    """The intended choice: a block's bf16 copy over PCIe 4 (25 GB/s) takes less time than its
    compute at 1024 px, so streaming more blocks costs nothing, while an fp8 base upcasts every
    weight at each use and costs fidelity. The bf16 base with more blocks swapped ranks first; an
    fp8 base would have to be LOSS_PRICE times faster to be chosen, and it is slower."""
    gpus, shape = parse_spec(f"1x{gb}GB"), run_shape("lora", None, ram_bytes=RAM)
    ranked = rank_recipes("flux", "lora", gpus, RECIPES, shape=shape)
    chosen = ranked[0]
    assert chosen.fits and chosen.settings["base_precision"] == "auto" and chosen.settings["blocks_to_swap"] > 0
    assert technique_cost("flux", "lora", chosen.settings, gpus.smallest).swap_s == 0.0
    quantized = compose("flux", "lora", gpus, chosen.recipe, {"base_precision": "fp8_scaled"}, shape)
    assert quantized.fits and quantized.settings["blocks_to_swap"] < chosen.settings["blocks_to_swap"]
    assert quantized.images_per_second < chosen.images_per_second < LOSS_PRICE * quantized.images_per_second
    written = written_for_card(ranked)
    assert written is not None and written.name == f"flux-lora-{gb}gb" and written.settings["base_precision"] == "fp8_scaled"
    why = line(plan_text(gb, capsys), "Choice")
    assert len(why) == 1
    assert f"chosen over flux-lora-{gb}gb" in why[0] and "about as fast" in why[0]
    assert f"the {chosen.settings['blocks_to_swap']} swapped blocks' copies hide under the compute" in why[0]
    assert "with the base in bf16 instead of fp8_scaled" in why[0]


def test_a_recipe_at_more_pixels_ranks_above_a_faster_one_written_at_fewer() -> None:
    """zimage-lora-16gb trains at 640 px: on 24 GB the 1024 px recipes rank above it, though it is faster per image."""
    ranked = [f for f in rank_recipes("zimage", "lora", parse_spec("1x24GB"), RECIPES, shape=run_shape("lora", None, ram_bytes=RAM)) if f.fits]
    assert ranked[0].settings["resolution"] == 1024
    small = next(f for f in ranked if f.name == "zimage-lora-16gb")
    assert small.settings["resolution"] == 640 and small.images_per_second > ranked[0].images_per_second


def test_the_tier_recipes_of_every_family_are_chosen_or_outranked_with_a_reason() -> None:
    """For each family's LoRA tiers: when the recipe written for the card is not the one chosen, the choice names it and says why.
    Qwen-Image reads its 20B transformer and its 7B text encoder in bf16 at start-up: 96 GB of RAM."""
    for family in ("flux", "chroma", "sd35", "sdxl", "zimage", "qwenimage"):
        shape = run_shape("lora", None, ram_bytes=96 * GIB if family == "qwenimage" else RAM)
        for gb in (8, 12, 16, 24, 48, 80):
            gpus = parse_spec(f"1x{gb}GB")
            ranked = rank_recipes(family, "lora", gpus, RECIPES, shape=shape)
            choice = choose(family, "lora", gpus, ranked, None, shape)
            assert choice is not None and ranked[0].fits, (family, gb)
            written = written_for_card(ranked)
            if written is not None and written is not ranked[0]:
                assert choice.over == written.name and choice.reasons[0].startswith(f"chosen over {written.name}, the heaviest recipe that fits as written ("), (family, gb, choice)
            if ranked[0].changes:
                assert choice.composed.startswith(f"composed for 1 × {gb} GiB from {ranked[0].name}: "), (family, gb, choice)


def test_the_wizard_recipe_step_names_the_composed_recipe_and_why_it_is_first(tmp_path) -> None:
    from tui.steps.recipe import choice_text, summary_text
    from tui.wizard_state import WizardState

    state = WizardState(gpus=parse_spec("1x12GB"), base_dir=tmp_path)
    state.family, state.method = "flux", "lora"
    fits = state.recipes()
    first = summary_text(fits[0], state.gpus)
    assert first.startswith("composed for 1 × 12 GiB from flux-lora-48gb: int8 text encoders, 52 blocks swapped; as written: FLUX.1 LoRA on the bf16 transformer")
    why = choice_text(state.recipe_choice(fits))
    assert why.startswith("Why: chosen over flux-lora-12gb, the heaviest recipe that fits as written") and "\n" in why
    written = next(f for f in fits if f.name == "flux-lora-12gb")
    assert summary_text(written, state.gpus) == f"flux-lora-12gb: {get_recipe('flux-lora-12gb').summary}"


@pytest.mark.slow
@sync
async def test_the_wizard_shows_the_composition_and_the_reasons_on_the_recipe_step(tmp_path, kohya_dataset) -> None:
    from textual.widgets import Input, Static

    from tui.app import SdtuiApp
    from tui.context import AppContext

    app = SdtuiApp(AppContext(runs_dir=tmp_path / "runs", gpu_spec="1x12GB"), start="wizard", theme="textual-dark")
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.pause(0.2)
        screen = app.screen
        screen.query_one("#model-path", Input).value = "flux-dev"
        await pilot.pause(0.05)
        await pilot.press("ctrl+n")
        screen.query_one("#dataset-path", Input).value = str(kohya_dataset())
        await until(pilot, lambda: screen.state.scan is not None)
        await pilot.press("ctrl+n")
        await pilot.pause(0.2)
        await pilot.press("ctrl+n")
        await until(pilot, lambda: bool(str(screen.query_one("#recipe-choice", Static).render())), timeout=60)
        summary, why = (str(screen.query_one(f"#recipe-{name}", Static).render()) for name in ("summary", "choice"))
    # the wizard's run samples (the encoders come back for each sample), so it swaps a little more than the plan without prompts
    assert re.match(r"composed for 1 × 12 GiB from flux-lora-48gb: int8 text encoders, \d+ blocks swapped; as written: FLUX.1 LoRA", summary), summary
    # with the samples' peak flux-lora-12gb no longer fits as written: the heaviest that does is named
    assert re.match(r"Why: chosen over flux-lora-\d+gb, the heaviest recipe that fits as written \(", why) and "\nWhy: int8 text encoders: without them" in why, why


def test_a_combination_that_does_not_fit_is_named_the_closest_not_composed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--model", "sdxl", "--method", "finetune", "--gpus", "1x6GB", "--ram", "64GB"]) == 0
    out = capsys.readouterr().out
    assert line(out, "Recipe")[0].startswith("Recipe    the closest to fitting 1 × 6 GiB from sdxl-finetune-")
    assert "DOES NOT FIT" in line(out, "VRAM")[0] and not line(out, "Choice")
