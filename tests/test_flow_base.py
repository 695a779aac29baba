"""The flow transformer base (core/families/flow_mmdit) and the shared T5 helpers (core/families/t5.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.errors import UserError
from core.families import spec, t5
from core.families.flow_mmdit import latents
from core.families.flow_mmdit.objective import flow_objective, shift_rule
from core.families.objectives import check_objective_settings
from core.families.sd_unet.tiny import WORDS

DEV_SCHEDULER = {"base_image_seq_len": 256, "base_shift": 0.5, "max_image_seq_len": 4096, "max_shift": 1.15, "shift": 3.0, "use_dynamic_shifting": True}


def test_the_t5_tokenizer_is_built_locally_and_the_same_every_time(tmp_path: Path) -> None:
    from transformers import T5TokenizerFast

    first = t5.write_tokenizer(tmp_path / "a", WORDS, 16)
    second = t5.write_tokenizer(tmp_path / "b", WORDS, 16)
    assert (first / "tokenizer.json").read_text() == (second / "tokenizer.json").read_text()
    tokenizer = T5TokenizerFast.from_pretrained(first)
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    ids, mask = t5.tokenize(tokenizer, ["a photo of sks dog", "A Zebra, 42!"], 8)
    assert ids.shape == mask.shape == (2, 8)
    assert tokenizer.convert_ids_to_tokens(ids[0][:6]) == ["\u2581a", "\u2581photo", "\u2581of", "\u2581sks", "\u2581dog", "</s>"]
    assert mask[0].tolist() == [1] * 6 + [0] * 2 and ids[0][6:].tolist() == [0, 0]
    assert 2 not in ids[1].tolist(), "an unknown word falls back to characters, never <unk>"
    assert ids[1][-1] == 1, "a truncated caption keeps its EOS"


def test_the_t5_padding_mask_changes_what_the_real_tokens_encode_to(tmp_path: Path) -> None:
    from transformers import T5TokenizerFast

    tokenizer = T5TokenizerFast.from_pretrained(t5.write_tokenizer(tmp_path, WORDS, 12))
    encoder = t5.tiny_encoder(WORDS)
    short, _ = t5.tokenize(tokenizer, ["a red dog"], 6)
    long_ids, long_mask = t5.tokenize(tokenizer, ["a red dog"], 12)
    with torch.no_grad():
        masked = t5.encode(encoder, long_ids, long_mask)[0, :4]
        unmasked = t5.encode(encoder, long_ids, None)[0, :4]
        alone = t5.encode(encoder, short[:, :4], None)[0]
    torch.testing.assert_close(masked, alone, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(unmasked, alone, atol=1e-4)


def test_packing_matches_the_flux_pipeline_and_unpacks_exactly() -> None:
    from diffusers import FluxPipeline

    x = torch.randn(2, 16, 6, 10)
    tokens = latents.pack(x)
    assert tokens.shape == (2, 15, 64)
    assert torch.equal(tokens, FluxPipeline._pack_latents(x, 2, 16, 6, 10))
    assert torch.equal(latents.unpack(tokens, 6, 10), x)
    assert torch.equal(latents.image_ids(6, 10, "cpu", torch.float32), FluxPipeline._prepare_latent_image_ids(2, 3, 5, "cpu", torch.float32))


def test_latents_use_the_vaes_scaling_and_shift() -> None:
    from core.families.flow_mmdit.tiny import vae16

    vae = vae16(0.5, 0.25)
    pixels = torch.rand(1, 3, 16, 16) * 2 - 1
    z = vae.encode(pixels).latent_dist.mode()
    torch.testing.assert_close(latents.encode_latents(vae, pixels), (z - 0.25) * 0.5)
    torch.testing.assert_close(latents.decode_latents(vae, (z - 0.25) * 0.5), vae.decode(z).sample.detach())


def test_the_shift_comes_from_the_models_scheduler_unless_the_run_sets_one() -> None:
    assert shift_rule(DEV_SCHEDULER, 2) == (1.0, (0.5, 1.15, 256, 4096, 2))
    assert shift_rule({"shift": 1.0, "use_dynamic_shifting": False}, 2) == (1.0, None)
    assert shift_rule({"shift": 3.0}, 2) == (3.0, None)
    assert shift_rule(DEV_SCHEDULER, 2, shift=3.1582) == (3.1582, None)
    dev = flow_objective(DEV_SCHEDULER, {})
    assert dev.shift_for((128, 128)) == pytest.approx(torch.e**1.15), "1024 px = 4096 tokens: max_shift"
    assert dev.shift_for((32, 32)) == pytest.approx(torch.e**0.5), "256 px = 256 tokens: base_shift"
    chosen = flow_objective(DEV_SCHEDULER, {"flow_sampling": "mode", "flow_weighting": "cosmap", "flow_shift": 2.0, "mode_scale": 0.5})
    assert (chosen.sampling, chosen.weighting, chosen.shift, chosen.mode_scale, chosen.token_shift) == ("mode", "cosmap", 2.0, 0.5, None)


def test_a_ddpm_family_refuses_flow_settings_in_one_sentence() -> None:
    check_objective_settings(spec("sd1"), "epsilon", {"flow_shift": 0.0, "flow_sampling": "logit_normal"})
    with pytest.raises(UserError, match=r"settings.flow_shift shapes flow matching and the sd1 family trains with epsilon"):
        check_objective_settings(spec("sd1"), "epsilon", {"flow_shift": 3.0})
