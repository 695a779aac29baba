"""Block swap under a full fine-tune in the estimator, the throughput model and the composer: the
swapped blocks' weights, gradients and optimizer state leave the GPU for host RAM, their
gradients cross PCIe back and the CPU steps them; the plan composes it where it fits and says
when the RAM is short."""

from __future__ import annotations

from itertools import pairwise

import pytest

from cli.main import main
from core.gpu import parse_spec
from core.memory import estimate
from core.memory.techniques import max_swappable, swap_of
from core.plan.fit import run_shape
from core.plan.picker import pick_recipes
from core.plan.throughput import images_per_second, technique_cost
from core.recipes import load_recipes
from core.units import GIB

FULL = {"optimizer": "adamw", "gradient_checkpointing": True, "cache_latents": True, "cache_text_encoder_outputs": True}


@pytest.mark.parametrize(("family", "method"), [("sdxl", "finetune"), ("flux", "finetune"), ("sd1", "dreambooth")])
def test_swapping_more_blocks_of_a_full_fine_tune_needs_less_vram_and_more_ram(family: str, method: str) -> None:
    counts = range(0, max_swappable(family) + 1, max(1, max_swappable(family) // 8))
    runs = [estimate(family, method, FULL | {"blocks_to_swap": n}) for n in counts]
    vram = [r.total_bytes for r in runs]
    ram = [r.host.training["swapped_blocks"] + r.host.training["swapped_gradients"] + r.host.training["swapped_optimizer_state"] for r in runs if r.host]
    assert all(a >= b for a, b in pairwise(vram)) and vram[-1] < vram[0] / 2
    assert all(a < b for a, b in pairwise(ram))


def test_the_host_holds_the_swapped_masters_gradients_and_adam_state_and_the_gpu_lets_them_go() -> None:
    """fp32 master, fp32 gradient and AdamW's two fp32 moments: 16 bytes a swapped parameter in RAM; the
    GPU keeps the other blocks' 16 bytes, two blocks of weights in flight and one block's gradients."""
    swap = swap_of("sdxl", 4)
    plain, swapped = estimate("sdxl", "finetune", FULL), estimate("sdxl", "finetune", FULL | {"blocks_to_swap": 4, "ema": True})
    host = swapped.host.training
    assert host["swapped_blocks"] == host["swapped_gradients"] == swap.params * 4
    assert host["swapped_optimizer_state"] == swap.params * 8 and host["swapped_ema"] == swap.params * 4
    b, before = swapped.breakdown, plain.breakdown
    assert b["weights_swap_buffers"] == swap.buffer_params * 4
    assert before["weights_denoiser"] - b["weights_denoiser"] == swap.params * 4
    assert before["optimizer_states"] - b["optimizer_states"] == pytest.approx(swap.params * 8, rel=1e-6)
    assert estimate("sdxl", "finetune", FULL | {"blocks_to_swap": 4, "ema": False}).breakdown["ema"] == 0
    assert "the optimizer steps them on the CPU" in " ".join(swapped.notes)


def test_without_checkpointing_the_swapped_weights_half_copies_stay_on_the_gpu_for_backward() -> None:
    """Autocast's bf16 copies of the fp32 masters are saved for backward without checkpointing, swapped
    or not; with checkpointing the swap clears them block by block."""
    from core.memory.estimator import _layout as layout
    from core.memory.estimator import autocast_copies_term
    from core.settings import resolve

    def copies(settings: dict) -> int:
        s = resolve("settings", FULL | settings)
        return autocast_copies_term(layout("sdxl", "finetune", s, 1, "ddp", 2), "finetune", s)

    swap = swap_of("sdxl", 4)
    plain = copies({"gradient_checkpointing": False})
    assert copies({"blocks_to_swap": 4, "gradient_checkpointing": False}) == plain > 0
    assert plain - copies({"blocks_to_swap": 4}) == (swap.params - swap.largest_block) * 2


def test_a_swapped_full_fine_tune_pays_for_gradients_back_and_the_cpu_step() -> None:
    gpu = parse_spec("1x4090").smallest
    settings = FULL | {"batch_size": 1}
    speeds = [images_per_second("sdxl", "finetune", settings | {"blocks_to_swap": n}, gpu) for n in (0, 3, 5)]
    assert all(a > b for a, b in pairwise(speeds))
    cost = technique_cost("sdxl", "finetune", settings | {"blocks_to_swap": 5}, gpu)
    lora = technique_cost("sdxl", "lora", settings | {"blocks_to_swap": 5}, gpu)
    assert cost.optimizer_s > 0 and lora.optimizer_s == 0
    assert any("step on the CPU" in note for note in cost.notes)
    # torch's fused AdamW is one vectorised CPU kernel; Adafactor's and bitsandbytes' 8-bit steps are
    # per-tensor ops and a fallback, measured far slower (bench.measure_cpu_optimizers): the note says so
    for slower in ("adafactor", "adamw8bit"):
        slow = technique_cost("sdxl", "finetune", settings | {"blocks_to_swap": 5, "optimizer": slower}, gpu)
        assert slow.optimizer_s > 5 * cost.optimizer_s and any("adamw steps" in note and "faster there" in note for note in slow.notes)


def test_the_composer_swaps_a_full_fine_tune_onto_a_small_card_and_stops_at_the_ram() -> None:
    recipes = load_recipes()
    roomy = pick_recipes("flux", "finetune", parse_spec("1x16GB"), recipes, shape=run_shape("finetune", None, ram_bytes=128 * GIB))
    assert roomy and roomy[0].settings["blocks_to_swap"] > 0 and roomy[0].fits
    assert roomy[0].estimate.total_bytes <= 0.9 * 16 * GIB and roomy[0].ram_need_bytes <= 0.85 * 128 * GIB
    # the same card with too little RAM for the swapped blocks' state: nothing fits
    assert pick_recipes("flux", "finetune", parse_spec("1x16GB"), recipes, shape=run_shape("finetune", None, ram_bytes=40 * GIB)) == []
    # never composed where technique_problem refuses it: two GPUs of a full fine-tune
    two = pick_recipes("sdxl", "finetune", parse_spec("2x8GB"), recipes, shape=run_shape("finetune", None, ram_bytes=128 * GIB))
    assert all(not fit.settings["blocks_to_swap"] for fit in two)


def test_the_plan_names_the_ram_a_swapped_full_fine_tune_lacks_and_the_fix(capsys) -> None:
    assert main(["plan", "--model", "flux-dev", "--method", "finetune", "--gpus", "1x12GB", "--ram", "40GB"]) == 0
    out = capsys.readouterr().out
    assert "blocks swapped" in out and "GiB of RAM while training" in out
    assert "a full fine-tune's swapped blocks keep their weights, gradients and optimizer state there: use a machine with more RAM" in out
