"""Training outputs load in other tools' loaders (diffusers here) and reproduce the trained model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.train.model.loading import load_components
from core.train.model.text import add_placeholder_tokens
from core.train.outputs.files import lora_files, save_embeddings, save_full_model, save_lora

# every test trains or loads the tiny models and writes their files: functional
pytestmark = pytest.mark.slow


def _image(pipe, prompt: str = "a red circle") -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompt, num_inference_steps=2, height=32, width=32, generator=torch.Generator().manual_seed(1), output_type="np")
    return np.asarray(out.images[0])


def _fresh(path, family):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if family == "sdxl":
        return StableDiffusionXLPipeline.from_pretrained(path)
    return StableDiffusionPipeline.from_pretrained(path, safety_checker=None, requires_safety_checker=False)


def _trained_lora(path, family, **settings):
    from peft import LoraConfig

    components = load_components(str(path))
    config = dict(r=4, lora_alpha=2.0, init_lora_weights="gaussian", use_dora=settings.get("use_dora", False))
    components.denoiser.add_adapter(LoraConfig(target_modules=settings.get("targets", ["to_q", "to_k", "to_v", "to_out.0"]), **config))
    if settings.get("text_encoder"):
        for encoder in components.text_encoders:
            encoder.add_adapter(LoraConfig(target_modules=settings.get("te_targets", ["q_proj", "k_proj", "v_proj", "out_proj"]), **config))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in [components.denoiser, *components.text_encoders]:
            for name, param in module.named_parameters():
                if "lora_" in name:
                    param.add_(torch.randn(param.shape, generator=generator) * 0.3)
    return components


@pytest.mark.parametrize(
    ("family", "text_encoder", "targets"),
    [
        ("sd1", True, ["to_q", "to_k", "to_v", "to_out.0"]),
        ("sd2", True, ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"]),
        ("sdxl", True, ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "conv1", "conv2", "proj_in", "proj_out"]),
    ],
)
def test_lora_both_formats_reproduce_the_trained_model(tmp_path, tiny_models, family, text_encoder, targets):
    path = tiny_models(family)
    components = _trained_lora(path, family, text_encoder=text_encoder, targets=targets)
    trained = _image(components.pipeline())
    files = save_lora(components, tmp_path / "output", "mine", metadata={"ss_output_name": "mine"})
    assert files.single_file == tmp_path / "output" / "mine.safetensors"
    assert files.diffusers == tmp_path / "output" / "diffusers" / "pytorch_lora_weights.safetensors"
    base = _image(_fresh(path, family))
    assert np.abs(base - trained).max() > 0.01  # the LoRA changes the image
    for source in (files.single_file, files.diffusers.parent):
        pipe = _fresh(path, family)
        pipe.load_lora_weights(str(source))
        np.testing.assert_allclose(_image(pipe), trained, atol=1e-5)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_text_encoder_mlp_lora_loads_in_diffusers_from_both_files(tmp_path, tiny_models, family):
    from core.families.sd_unet import LORA_TARGETS

    path = tiny_models(family)
    components = _trained_lora(path, family, text_encoder=True, te_targets=list(LORA_TARGETS["text_encoder"]["attn_ff"]))
    keys = lora_files(components).kohya
    assert any(".mlp_fc1." in k or "_mlp_fc1." in k for k in keys) and any("_mlp_fc2." in k for k in keys)
    trained = _image(components.pipeline())
    files = save_lora(components, tmp_path / "output", "mlp", dtype=torch.float32)
    for source in (files.single_file, files.diffusers.parent):
        pipe = _fresh(path, family)
        pipe.load_lora_weights(str(source))
        np.testing.assert_allclose(_image(pipe), trained, atol=1e-5)


def test_kohya_keys_alpha_and_metadata(tmp_path, tiny_models):
    from safetensors import safe_open

    components = _trained_lora(tiny_models("sdxl"), "sdxl", text_encoder=True)
    keys = lora_files(components).kohya
    assert any(k.startswith("lora_unet_input_blocks_") for k in keys)  # SGM names, as kohya's SDXL trainer writes
    assert any(k.startswith("lora_te1_text_model_encoder_layers_0_self_attn_q_proj.") for k in keys)
    assert any(k.startswith("lora_te2_text_model_encoder_layers_0_self_attn_q_proj.") for k in keys)
    alphas = {float(v) for k, v in keys.items() if k.endswith(".alpha")}
    assert alphas == {2.0}  # the trained alpha, not the rank
    save_lora(components, tmp_path, "x", metadata={"ss_network_module": "networks.lora", "modelspec.title": "x"})
    with safe_open(str(tmp_path / "x.safetensors"), "pt") as handle:
        saved = handle.metadata()
    assert saved["ss_network_module"] == "networks.lora" and saved["modelspec.title"] == "x"
    assert len(saved["sshs_model_hash"]) == 64 and len(saved["sshs_legacy_hash"]) == 8


def test_sd1_kohya_text_encoder_keys(tiny_models):
    components = _trained_lora(tiny_models("sd1"), "sd1", text_encoder=True)
    keys = lora_files(components).kohya
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight" in keys
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight" in keys


def test_dora_diffusers_file_reproduces_the_model(tmp_path, tiny_models):
    path = tiny_models("sd1")
    components = _trained_lora(path, "sd1", use_dora=True)
    trained = _image(components.pipeline())
    files = save_lora(components, tmp_path, "dora")
    assert any(k.endswith(".dora_scale") for k in lora_files(components).kohya)
    pipe = _fresh(path, "sd1")
    pipe.load_lora_weights(str(files.diffusers.parent))
    np.testing.assert_allclose(_image(pipe), trained, atol=1e-5)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_textual_inversion_both_forms_load(tmp_path, tiny_models, family):
    from safetensors.torch import load_file

    path = tiny_models(family)
    components = load_components(str(path))
    ids = add_placeholder_tokens(components, "<shp>", num_vectors=2, init_word="shape")
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for encoder, rows in zip(components.text_encoders, ids):
            table = encoder.get_input_embeddings().weight
            table[rows] = torch.randn(len(rows), table.shape[1], generator=generator)
    vectors = [encoder.get_input_embeddings().weight[rows].detach().clone() for encoder, rows in zip(components.text_encoders, ids)]
    prompt = "a <shp> circle"
    trained = _image(components.pipeline(), prompt)
    files = save_embeddings(components, tmp_path / "output", "<shp>", vectors)
    a1111 = load_file(str(files.single_file))
    assert set(a1111) == ({"clip_l", "clip_g"} if family == "sdxl" else {"emb_params"})

    pipe = _fresh(path, family)
    if family == "sdxl":
        pipe.load_textual_inversion(a1111["clip_l"], token="<shp>", text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
        pipe.load_textual_inversion(a1111["clip_g"], token="<shp>", text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2)
    else:
        pipe.load_textual_inversion(str(files.single_file), token="<shp>")
    np.testing.assert_allclose(_image(pipe, prompt), trained, atol=1e-5)

    pipe = _fresh(path, family)
    folder = files.diffusers.parent
    if family == "sdxl":
        pipe.load_textual_inversion(str(folder), weight_name="learned_embeds.safetensors", text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
        pipe.load_textual_inversion(str(folder), weight_name="learned_embeds_2.safetensors", text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2)
    else:
        pipe.load_textual_inversion(str(folder))
    np.testing.assert_allclose(_image(pipe, prompt), trained, atol=1e-5)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_full_model_diffusers_folder_and_single_file(tmp_path, tiny_models, family):
    path = tiny_models(family)
    components = load_components(str(path))
    with torch.no_grad():
        for param in components.denoiser.parameters():
            param.mul_(1.01)
    trained = _image(components.pipeline())
    files = save_full_model(components, tmp_path / "output", "full")
    np.testing.assert_allclose(_image(_fresh(files.diffusers, family)), trained, atol=1e-5)
    reloaded = load_components(str(files.single_file), config_path=str(path))
    np.testing.assert_allclose(_image(reloaded.pipeline()), trained, atol=1e-5)
    save_full_model(components, tmp_path / "output", "full")  # saving again replaces the folder
    assert not [p for p in (tmp_path / "output").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_original_layout_round_trips_the_real_architectures(family):
    """Real-size configs on the meta device: our original-layout names are what diffusers' importer reads."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint, convert_open_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from core.families import spec
    from core.families.sd_unet.layout import clip_to_original, open_clip_to_original, unet_module_name, vae_to_original

    config = spec(family).component_configs()
    with init_empty_weights():
        unet = UNet2DConditionModel(**config["unet"])
        vae = AutoencoderKL(**config["vae"])
        encoders = [CLIPTextModel(CLIPTextConfig(**config["text_encoder"]))]
        if family == "sdxl":
            encoders.append(CLIPTextModelWithProjection(CLIPTextConfig(**config["text_encoder_2"])))
    unet_state = unet.state_dict()
    original = {}
    for key, tensor in unet_state.items():
        module, _, param = key.rpartition(".")
        original[f"model.diffusion_model.{unet_module_name(module, dict(unet.config))}.{param}"] = tensor
    assert convert_ldm_unet_checkpoint(original, dict(unet.config)).keys() == unet_state.keys()
    up = "output_blocks.2.2.conv.weight" if family == "sdxl" else "output_blocks.2.1.conv.weight"
    assert f"model.diffusion_model.{up}" in original  # where the reference checkpoints keep the first upsampler

    vae_state = vae.state_dict()
    assert convert_ldm_vae_checkpoint(vae_to_original(vae_state, dict(vae.config)), dict(vae.config)).keys() == vae_state.keys()

    first = encoders[0].state_dict()
    if family == "sd2":
        converted = convert_open_clip_checkpoint(encoders[0], open_clip_to_original(first, "cond_stage_model.model."))
    else:
        prefix = "conditioner.embedders.0.transformer." if family == "sdxl" else "cond_stage_model.transformer."
        converted = convert_ldm_clip_checkpoint(clip_to_original(first, prefix))
    assert {k.removeprefix("text_model.") for k in converted} == set(first)
    if family == "sdxl":
        second = encoders[1].state_dict()
        converted = convert_open_clip_checkpoint(encoders[1], open_clip_to_original(second, "conditioner.embedders.1.model."), prefix="conditioner.embedders.1.model.")
        assert converted.keys() == second.keys()


@pytest.mark.parametrize("kind", ["loha", "lokr"])
def test_loha_lokr_peft_folders_load_with_peft_model_from_pretrained(tmp_path, tiny_models, kind):
    """output/peft/<component>/ is what PeftModel.save_pretrained writes: every adapter tensor loads
    (none reported missing) and merging gives the trained weights."""
    import warnings

    from diffusers import UNet2DConditionModel
    from peft import PeftModel

    from core.train.model.methods import adapter_config

    path = tiny_models("sd1")
    components = load_components(str(path))
    settings = {"lora_type": kind, "lora_rank": 4, "lora_alpha": 2.0, "lokr_factor": -1}
    components.denoiser.add_adapter(adapter_config(settings, ["to_q", "to_k", "to_v", "to_out.0"]))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in components.denoiser.named_parameters():
            if f"{'hada' if kind == 'loha' else 'lokr'}_" in name:
                param.add_(torch.randn(param.shape, generator=generator) * 0.3)
    trained = {}
    for name, module in components.denoiser.named_modules():
        if hasattr(module, "get_delta_weight") and hasattr(module, "get_base_layer"):
            with torch.no_grad():
                trained[name] = module.get_base_layer().weight + module.get_delta_weight("default")
    files = save_lora(components, tmp_path / "output", "mine")
    assert files.diffusers == tmp_path / "output" / "peft"
    fresh = UNet2DConditionModel.from_pretrained(path, subfolder="unet")
    base = {name: fresh.get_submodule(name).weight.detach().clone() for name in trained}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = PeftModel.from_pretrained(fresh, str(files.diffusers / "unet"))
    assert not [w for w in caught if "missing" in str(w.message).lower()]
    merged = model.merge_and_unload()
    assert trained
    for name, weight in trained.items():
        got = merged.get_submodule(name).weight
        assert not torch.allclose(got, base[name]), name  # merging changes the weights ...
        torch.testing.assert_close(got, weight, rtol=1e-4, atol=1e-5)  # ... to the trained ones
