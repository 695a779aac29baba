"""The memory techniques in the sd-scripts export: the base precision as --fp8_base / --fp8_base_unet,
the block swap as --blocks_to_swap in sd-scripts' own count, each family's DiT script, and what has
no sd-scripts flag (an int8 or nf4 base, fp8 text encoders alone) named in the summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import tomllib

from core.config import new_config
from core.errors import UserError
from core.kohya import export_kohya
from core.kohya_args import SCRIPT_FLAGS
from core.kohya_memory import _block_lists, _paired_params, sd_scripts_swap
from core.memory.techniques import swap_of
from core.recipes import get_recipe
from tests.conftest import write_image


def export(tmp_path: Path, family: str, settings: dict[str, Any], method: str = "lora", name: str = "kohya") -> tuple[Any, dict[str, Any]]:
    """Export a run of ``family`` with ``settings``; the export and its flags (the tables flattened)."""
    folder = tmp_path / "data" / "10_sks dog"
    if not folder.exists():
        folder.mkdir(parents=True)
        write_image(folder / "a.png", (64, 64))
    config = new_config("sks", f"/models/{family}", family, method, [{"path": str(folder), "repeats": 10, "token": "sks dog"}], settings)
    done = export_kohya(config, tmp_path / name)
    flags = {k: v for table in tomllib.loads(done.written[2].read_text()).values() for k, v in table.items()}
    assert set(flags) <= SCRIPT_FLAGS[done.script]
    return done, flags


def test_flux_12gb_exports_an_fp8_denoiser_sd_scripts_swap_count_and_names_the_int8_t5(tmp_path: Path) -> None:
    done, flags = export(tmp_path, "flux", dict(get_recipe("flux-lora-12gb").settings))
    assert done.script == "flux_train_network.py"
    assert flags["fp8_base_unet"] is True and "fp8_base" not in flags
    assert flags["blocks_to_swap"] == sd_scripts_swap("flux", 44)[0] == 24
    assert flags["model_type"] == "flux" and flags["cache_text_encoder_outputs"] is True and flags["network_module"] == "networks.lora_flux"
    assert done.summary() == (
        'not exported, flux_train_network.py has no option for: settings.text_encoder_precision = "int8" (sd-scripts stores the text encoders in fp8 only together with the base: --fp8_base)'
    )
    notes = " ".join(done.notes)
    assert "plain cast to e4m3 without fp8_scaled's per-row scales" in notes and "clip_l, t5xxl, ae as single .safetensors files" in notes


def test_an_fp8_base_with_fp8_text_encoders_is_fp8_base(tmp_path: Path) -> None:
    done, flags = export(tmp_path, "flux", {"base_precision": "fp8", "text_encoder_precision": "fp8", "lora_targets": "attn_ff"})
    assert flags["fp8_base"] is True and "fp8_base_unet" not in flags and "blocks_to_swap" not in flags
    assert done.summary() == "" and not any("per-row scales" in n for n in done.notes)


def test_an_nf4_base_has_no_sd_scripts_flag_and_says_so_instead_of_dropping_it(tmp_path: Path) -> None:
    done, flags = export(tmp_path, "flux", dict(get_recipe("flux-lora-8gb").settings))
    assert "fp8_base" not in flags and "fp8_base_unet" not in flags and flags["blocks_to_swap"] == 24
    summary = done.summary()
    assert 'settings.base_precision = "nf4" (sd-scripts stores a frozen base in fp8 at the least: --fp8_base_unet)' in summary
    assert 'settings.text_encoder_precision = "nf4"' in summary and "\n" not in summary


def test_sd35_exports_its_network_script_with_the_same_block_count(tmp_path: Path) -> None:
    done, flags = export(tmp_path, "sd35", {"base_precision": "fp8_scaled", "blocks_to_swap": 10, "gradient_checkpointing": True})
    assert done.script == "sd3_train_network.py"
    assert flags["fp8_base_unet"] is True and flags["blocks_to_swap"] == 10 and "model_type" not in flags
    assert flags["network_module"] == "networks.lora_sd3"
    assert "clip_l, clip_g, t5xxl" in " ".join(done.notes)


def test_sdxl_exports_the_fp8_base_and_names_the_swap_its_script_lacks(tmp_path: Path) -> None:
    done, flags = export(tmp_path, "sdxl", dict(get_recipe("sdxl-lora-fp8-6gb").settings) | {"blocks_to_swap": 5})
    assert done.script == "sdxl_train_network.py" and flags["fp8_base_unet"] is True and "blocks_to_swap" not in flags
    assert flags["network_module"] == "networks.lora"
    assert "settings.blocks_to_swap = 5 (sd-scripts swaps blocks only in its DiT scripts: FLUX.1, Chroma, SD3)" in done.summary()


def test_chroma_is_flux_s_network_script_with_its_model_type_and_t5_mask(tmp_path: Path) -> None:
    done, flags = export(tmp_path, "chroma", {"blocks_to_swap": 45})
    assert done.script == "flux_train_network.py"
    assert flags["model_type"] == "chroma" and flags["apply_t5_attn_mask"] is True and flags["blocks_to_swap"] == sd_scripts_swap("chroma", 45)[0]


@pytest.mark.parametrize(("family", "method"), [("zimage", "lora"), ("qwenimage", "lora"), ("chroma", "finetune")])
def test_a_family_sd_scripts_does_not_train_is_refused_in_one_sentence(tmp_path: Path, family: str, method: str) -> None:
    with pytest.raises(UserError) as caught:
        export(tmp_path, family, {}, method)
    message = str(caught.value)
    assert message.startswith(f"sd-scripts has no script that trains {family} with {method} (it has scripts for sd1, sd2, sdxl, sd35, flux, chroma)")
    assert "\n" not in message and not (tmp_path / "kohya").exists()


@pytest.mark.parametrize("family", ["flux", "chroma"])
@pytest.mark.parametrize("count", [1, 10, 30, 44, 52])
def test_the_flux_swap_count_is_the_smallest_that_moves_as_many_parameters_off_the_gpu(family: str, count: int) -> None:
    doubles, singles = _block_lists(family)
    n, note = sd_scripts_swap(family, count)
    wanted = swap_of(family, count).params
    assert not note and _paired_params(doubles, singles, n) >= wanted and _paired_params(doubles, singles, n - 1) < wanted


def test_more_than_sd_scripts_can_swap_is_capped_with_a_note() -> None:
    n, note = sd_scripts_swap("flux", 56)
    assert n == 35 and "sd-scripts swaps at most 35 flux blocks (17 double, 36 single)" in note
