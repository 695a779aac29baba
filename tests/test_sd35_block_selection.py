"""SD 3.5 LoRA per joint block: ``settings.train_block_indices`` (sd-scripts' SD3 network argument) in the
trainer, the estimator, the kohya export and file metadata, and the wizard / CLI validation."""

from __future__ import annotations

import json

import pytest
from safetensors import safe_open

from core.errors import UserError
from core.families import runtime, spec
from tests.train_helpers import make_run, train


@pytest.fixture(scope="module")
def tiny(tiny_models):
    return tiny_models("sd35")


def _targets(components, targets: str, blocks: str) -> list[str]:
    return runtime("sd35").lora_target_modules(components.denoiser, spec("sd35").lora_targets_of("transformer", targets), {"lora_targets": targets, "train_block_indices": blocks})


@pytest.mark.slow
def test_the_selection_adapts_only_the_chosen_joint_blocks(tiny):
    from core.families.sd_unet import is_lora_target
    from core.train.model.loading import load_components

    components = load_components(str(tiny))
    suffixes = spec("sd35").lora_targets_of("transformer", "all")
    every = [name for name, module in components.denoiser.named_modules() if is_lora_target(name, suffixes) and getattr(module, "weight", None) is not None]
    assert sorted(_targets(components, "all", "")) == sorted(every) == sorted(_targets(components, "all", "0-1")), "all blocks: what the suffixes adapted before"
    chosen = _targets(components, "all", "1")
    assert chosen and all(name.startswith("transformer_blocks.1.") for name in chosen)
    assert "transformer_blocks.1.norm1.linear" in chosen and "transformer_blocks.1.attn.to_q" in chosen
    assert not any(name.startswith("transformer_blocks.0.") for name in chosen)
    with pytest.raises(UserError, match=r"^settings.train_block_indices names block 5, but the model has blocks 0-1; fix the list$"):
        _targets(components, "attn", "0,5")
    with pytest.raises(UserError, match=r"^settings.train_block_indices select no block to train"):
        _targets(components, "attn", "none")


@pytest.mark.slow
def test_the_estimate_counts_only_the_chosen_blocks_as_the_trainer_adapts_them():
    """params.json's per-block widths against the trainer's own selection on the real Medium transformer (meta device)."""
    import torch

    from bench.measure_params import build_meta, lora_width
    from core.memory.trainable import trainable

    family = spec("sd35")
    denoiser = build_meta("sd35", "transformer", family.component_configs()["transformer"])
    modules = dict(denoiser.named_modules())
    for targets, blocks in (("attn", "0-11"), ("all", "3,20-23"), ("attn_ff", "")):
        names = runtime("sd35").lora_target_modules(denoiser, family.lora_targets_of("transformer", targets), {"lora_targets": targets, "train_block_indices": blocks})
        expected = 16 * sum(lora_width(modules[name]) for name in names)
        assert trainable("sd35", "lora", {"lora_targets": targets, "lora_rank": 16, "train_block_indices": blocks}).params == expected, (targets, blocks)
    assert isinstance(denoiser, torch.nn.Module)
    half = trainable("sd35", "lora", {"train_block_indices": "0-11"}).params
    assert 0 < half < trainable("sd35", "lora", {}).params
    assert trainable("sd35-large", "lora", {"train_block_indices": "30-37"}).params > 0, "Large has blocks 24-37 of its own"


def test_the_memory_estimate_holds_the_smaller_adapter_and_its_optimizer_state():
    from core.memory.estimator import estimate
    from core.memory.trainable import trainable

    settings = {"cache_text_encoder_outputs": False, "cache_latents": False, "lora_rank": 64}
    every, six = estimate("sd35", "lora", settings), estimate("sd35", "lora", {**settings, "train_block_indices": "0-5"})
    ratio = trainable("sd35", "lora", {**settings, "train_block_indices": "0-5"}).params / trainable("sd35", "lora", settings).params
    assert 0.2 < ratio < 0.35, "6 of 24 blocks, the first 13 with a second attention"
    for term in ("weights_adapters", "optimizer_states"):
        assert six.breakdown[term] == pytest.approx(every.breakdown[term] * ratio, rel=1e-3), term


@pytest.mark.slow
def test_a_block_past_the_depth_is_one_sentence_in_the_cli_and_the_wizard(tmp_path, tiny, kohya_dataset, capsys):
    from cli.main import main
    from core.gpu import resolve
    from core.settings import family_problem
    from tui.wizard_state import WizardState

    run = make_run(tmp_path / "run", tiny, kohya_dataset(((1, "sks dog", 1),)), "sd35", settings={"train_block_indices": "0,2"})
    assert main(["plan", str(run / "run.toml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("settings.train_block_indices names block 2, but the model has blocks 0-1; fix the list") and err.count("\n") == 0
    assert family_problem("sd35", "auto", {"train_block_indices": "30"}, "sd35-medium") == "settings.train_block_indices names block 30, but the model has blocks 0-23; fix the list"
    assert family_problem("sd35", "auto", {"train_block_indices": "30-37"}, "sd35-large") is None
    assert family_problem("sd35", "auto", {"train_block_indices": "0-9,x"}) == "settings.train_block_indices = '0-9,x' is not a block list; write e.g. 0-9,15 (or all / none)"
    assert family_problem("sd35", "auto", {"train_double_block_indices": "1"}) == "settings.train_double_block_indices selects FLUX.1-style blocks and the sd35 family has none; remove it"
    assert family_problem("sdxl", "auto", {"train_block_indices": "1"}).startswith("settings.train_block_indices selects transformer blocks")
    state = WizardState(gpus=resolve("1x24GB"), base_dir=tmp_path)
    state.set_model("sd35-medium")
    state.set_setting("train_block_indices", "10-24")
    with pytest.raises(UserError, match=r"^settings.train_block_indices names block 24, but the model has blocks 0-23; fix the list$"):
        state.check_recipe()


def test_the_kohya_export_passes_the_selection_as_sd_scripts_network_argument():
    from core.kohya_args import network
    from core.settings import resolve

    assert network(resolve("settings", {"train_block_indices": "0-3, 7"})) == ("networks.lora", ["train_block_indices=0-3,7"])
    assert network(resolve("settings", {"train_block_indices": "all"})) == ("networks.lora", [])
    assert network(resolve("settings", {"train_block_indices": "none", "lora_type": "loha"}))[1] == ["algo=loha", "train_block_indices=none"]


@pytest.mark.slow
def test_a_run_with_a_block_selection_trains_and_writes_only_those_blocks(tmp_path, tiny, kohya_dataset):
    data = kohya_dataset(((1, "a photo of sks dog", 2),))
    run = make_run(tmp_path / "run", tiny, data, "sd35", settings={"train_block_indices": "1", "lora_targets": "attn_ff", "bucket_reso_steps": 64}, schedule={"max_steps": 1})
    assert train(run) == 0
    with safe_open(str(run / "output" / "tiny.safetensors"), "pt") as kohya:
        keys, meta = list(kohya.keys()), kohya.metadata()
    assert keys and {key.split(".")[0].split("_")[4] for key in keys} == {"1"}, "lora_unet_joint_blocks_1_... only"
    assert all(key.startswith("lora_unet_joint_blocks_1_") for key in keys)
    assert json.loads(meta["ss_network_args"]) == {"train_block_indices": "1"}


def test_params_json_holds_each_selectable_blocks_lora_width_and_the_estimate_needs_no_torch():
    """Every family with block selection (FamilySpec.block_settings) has its per-block widths measured
    (``python -m bench.measure_params --family NAME``), one per block of its real depth."""
    import subprocess
    import sys

    from core.families import FAMILIES
    from core.memory import data

    for family in FAMILIES:
        found = spec(family)
        for variant in ("", *found.sized_variants):
            measured = data.params()[variant or family][found.denoiser]
            for block_list in found.block_settings.values():
                for targets, widths in measured["lora_block_width"].items():
                    assert len(widths[block_list]) == found.block_depth(block_list, variant), (family, variant, block_list)
                    assert 0 < sum(widths[block_list]) <= measured["lora_width"][targets], (family, targets)
    code = "import sys, core.memory; core.memory.estimate('sd35', 'lora', {'train_block_indices': '0-3'}); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
