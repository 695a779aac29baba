"""Z-Image (Turbo, Base) on the tiny model: what ZImagePipeline does, reproduced by the family's hooks;
loading from a folder, a single file and ComfyUI's split files; LoRA files both tools load; training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import UserError
from core.families import runtime, spec
from core.families.detect import detect_family
from core.families.zimage import layout
from core.train.model.loading import load_components
from core.train.model.tiny import build_tiny_single_file
from core.train.outputs.files import lora_files, save_lora
from tests.train_helpers import make_run, metrics, status, train

RT = runtime("zimage")


@pytest.fixture(scope="module")
def zimage(tiny_models) -> Path:
    """The tiny Z-Image diffusers folder (a name without 'turbo': samples draw as Turbo, the default)."""
    return tiny_models("zimage")


def _pipe(path: Path):
    from diffusers import ZImagePipeline

    pipe = ZImagePipeline.from_pretrained(str(path))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _image(pipe, prompt: str = "a red circle", guidance: float = 0.0) -> np.ndarray:
    out = pipe(prompt, num_inference_steps=2, height=32, width=32, guidance_scale=guidance, generator=torch.Generator().manual_seed(1), output_type="np")
    return np.asarray(out.images[0])


def test_the_variants_sample_as_their_model_cards_say():
    family = spec("zimage")
    assert [v.name for v in family.variants] == ["z-image-turbo", "z-image"]
    assert RT.sample_defaults("z-image-turbo") == (9, 0.0)  # distilled: few steps, no CFG
    assert RT.sample_defaults("z-image") == (50, 4.0)
    assert family.text_encoders[0].max_tokens == 512 and not family.text_encoders[0].trainable


def test_turbo_and_base_keep_their_own_flow_shift():
    """Tongyi-MAI/Z-Image-Turbo's scheduler_config.json: shift 3.0; Tongyi-MAI/Z-Image's (Base): 6.0; neither dynamic."""
    family = spec("zimage")
    turbo, base = family.scheduler_config("z-image-turbo"), family.scheduler_config("z-image")
    assert (turbo["shift"], turbo["use_dynamic_shifting"]) == (3.0, False)
    assert (base["shift"], base["use_dynamic_shifting"]) == (6.0, False)


def test_a_base_file_over_a_turbo_folder_trains_and_samples_at_base_shift(zimage, tmp_path):
    import json
    import shutil

    from core.families.protocol import ModelSource

    assert load_components(str(zimage)).objective.shift == 3.0  # the folder's own scheduler (Turbo's)
    base_file = build_tiny_single_file("zimage", tmp_path / "z_image_bf16.safetensors")  # ComfyUI's Base name
    base = load_components(str(base_file))
    assert base.variant == "z-image" and base.objective.shift == 6.0 and base.scheduler.config.shift == 6.0
    assert RT.sample_defaults(base.variant) == (50, 4.0)
    split = RT.load(ModelSource(str(zimage), denoiser=str(base_file)))
    assert (split.variant, split.scheduler.config.shift) == ("z-image", 6.0)
    turbo_file = build_tiny_single_file("zimage", tmp_path / "z_image_turbo_bf16.safetensors")
    turbo = load_components(str(turbo_file))
    assert (turbo.variant, turbo.objective.shift) == ("z-image-turbo", 3.0)
    # a folder whose name says nothing: its scheduler tells (Base's shift 6.0), and it is not overridden
    folder = shutil.copytree(zimage, tmp_path / "my-model")
    config = folder / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "shift": 6.0}))
    assert (RT.load(ModelSource(str(folder))).variant, load_components(str(folder)).objective.shift) == ("z-image", 6.0)
    config.write_text(json.dumps({**json.loads(config.read_text()), "shift": 2.0}))
    custom = load_components(str(folder))
    assert (custom.variant, custom.objective.shift) == ("z-image-turbo", 2.0)


def test_zimage_models_are_told_apart_from_their_files_and_names(zimage, tmp_path):
    single = build_tiny_single_file("zimage", tmp_path / "z_image_turbo_bf16.safetensors")
    assert detect_family(str(zimage)) == "zimage"
    assert detect_family(str(single)) == "zimage"
    assert detect_family("Tongyi-MAI/Z-Image-Turbo") == detect_family("z-image") == "zimage"
    from core.families.zimage.runtime import variant_of_name

    assert variant_of_name("models/z_image_turbo_bf16.safetensors") == "z-image-turbo"
    assert variant_of_name("Tongyi-MAI/Z-Image") == "z-image"
    assert variant_of_name("/data/my-model") == "z-image-turbo"


def test_captions_are_encoded_as_the_pipeline_encodes_them(zimage):
    components = load_components(str(zimage))
    captions = ["a photo of sks dog", "red circle on a blue background"]
    pipe = components.pipeline()
    with torch.no_grad():
        ours = RT.encode_text(components.text_encoders, RT.tokenize(components.tokenizers, captions), 1)
        theirs, _ = pipe.encode_prompt(list(captions), device="cpu", do_classifier_free_guidance=False)
    mask = ours.extra["attention_mask"]
    for n, reference in enumerate(theirs):
        torch.testing.assert_close(ours.prompt_embeds[n][mask[n]], reference, atol=1e-6, rtol=1e-5)
    assert ours.prompt_embeds.shape[1] == max(len(t) for t in theirs)  # trimmed to the longest caption, not 512


def test_the_prediction_is_the_negated_transformer_output_the_pipeline_steps_with(zimage):
    components = load_components(str(zimage))
    with torch.no_grad():
        text = RT.encode_text(components.text_encoders, RT.tokenize(components.tokenizers, ["a dog", "a photo of a red circle"]), 1)
        noisy = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(0))
        timesteps = torch.tensor([250.0, 900.0])
        ours = RT.predict(components.denoiser, noisy, timesteps, text.prompt_embeds, RT.extra_conditioning(text, {}, "cpu", {}))
        captions = [h[m] for h, m in zip(text.prompt_embeds, text.extra["attention_mask"])]
        out = components.denoiser(list(noisy.unsqueeze(2).unbind(0)), (1000 - timesteps) / 1000, captions, return_dict=False)[0]
    torch.testing.assert_close(ours, -torch.stack(out).squeeze(2))


def _weights(module) -> dict[str, torch.Tensor]:
    return {k: v.float() for k, v in module.state_dict().items()}


def test_a_single_file_in_the_original_layout_loads_the_same_weights(zimage, tmp_path):
    from safetensors import safe_open

    single = build_tiny_single_file("zimage", tmp_path / "z_image_turbo_bf16.safetensors")
    with safe_open(str(single), framework="pt") as handle:
        keys = set(handle.keys())
    assert "layers.0.attention.qkv.weight" in keys and "x_embedder.weight" in keys and "layers.0.attention.to_q.weight" not in keys
    folder = load_components(str(zimage))
    loaded = load_components(str(single))
    assert loaded.model_path == str(single)
    for name, tensor in _weights(folder.denoiser).items():
        torch.testing.assert_close(_weights(loaded.denoiser)[name], tensor)


def test_comfyui_split_files_fp8_included_replace_the_parts(zimage, tmp_path):
    from safetensors.torch import save_file

    base = load_components(str(zimage))
    original = layout.to_original(base.denoiser.state_dict())
    fp8 = {k: v.to(torch.float8_e4m3fn) if v.ndim == 2 else v for k, v in original.items()}
    save_file({f"model.diffusion_model.{k}": v.contiguous() for k, v in fp8.items()}, str(tmp_path / "z_image_turbo_fp8_e4m3fn.safetensors"))
    encoder = {f"model.{k}": v.contiguous() for k, v in base.text_encoders[0].state_dict().items()}
    encoder["lm_head.weight"] = base.text_encoders[0].state_dict()["embed_tokens.weight"].clone()
    save_file(encoder, str(tmp_path / "qwen_3_4b.safetensors"))
    save_file({k: v.contiguous() for k, v in base.vae.state_dict().items()}, str(tmp_path / "ae.safetensors"))

    split = load_components(
        str(zimage),
        vae_path=str(tmp_path / "ae.safetensors"),
        split_files={"denoiser": str(tmp_path / "z_image_turbo_fp8_e4m3fn.safetensors"), "qwen3": str(tmp_path / "qwen_3_4b.safetensors")},
    )
    upcast = layout.to_diffusers({k: v.float() for k, v in fp8.items()})
    for name, tensor in _weights(split.denoiser).items():
        torch.testing.assert_close(tensor, upcast[name].float())  # the fp8 values, upcast
    assert max((_weights(split.denoiser)[n] - t).abs().max().item() for n, t in _weights(base.denoiser).items()) < 0.1
    for name, tensor in _weights(base.text_encoders[0]).items():
        torch.testing.assert_close(_weights(split.text_encoders[0])[name], tensor)
    with pytest.raises(UserError, match="qwen"):
        load_components(str(zimage), split_files={"t5xxl": str(tmp_path / "qwen_3_4b.safetensors")})


def test_lora_targets_and_the_block_selection(zimage):
    components = load_components(str(zimage))
    family = components.spec

    def names(targets: str, blocks: str = "") -> list[str]:
        return RT.lora_target_modules(components.denoiser, family.lora_targets_of("transformer", targets), {"lora_targets": targets, "train_block_indices": blocks})

    attn = names("attn")
    assert "layers.0.attention.to_q" in attn and "context_refiner.0.attention.to_out.0" in attn and not any("feed_forward" in n for n in attn)
    assert "noise_refiner.0.feed_forward.w2" in names("attn_ff")
    assert {"all_x_embedder.2-1", "cap_embedder.1", "t_embedder.mlp.0", "layers.1.adaLN_modulation.0"} <= set(names("all"))
    chosen = names("attn_ff", "1")
    assert any(n.startswith("layers.1.") for n in chosen) and not any(n.startswith("layers.0.") for n in chosen)
    with pytest.raises(UserError, match="train_block_indices"):
        names("attn", "0-7")


def _trained_lora(path: Path, targets: list[str], kind: str = "lora"):
    from peft import LoHaConfig, LoKrConfig, LoraConfig

    components = load_components(str(path))
    configs = {
        "lora": LoraConfig(r=4, lora_alpha=2.0, init_lora_weights="gaussian", target_modules=targets),
        "loha": LoHaConfig(r=4, alpha=2.0, target_modules=targets),
        "lokr": LoKrConfig(r=4, alpha=2.0, target_modules=targets),
    }
    components.denoiser.add_adapter(configs[kind])
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in components.denoiser.named_parameters():
            if "lora_" in name or "hada_" in name or "lokr_" in name:
                param.add_(torch.randn(param.shape, generator=generator) * 0.3)
    return components


@pytest.mark.slow
@pytest.mark.parametrize("targets", ["attn", "all"])
def test_both_lora_files_load_in_zimage_pipeline_and_reproduce_the_trained_model(zimage, tmp_path, targets):
    names = RT.lora_target_modules(load_components(str(zimage)).denoiser, spec("zimage").lora_targets_of("transformer", targets), {"lora_targets": targets})
    components = _trained_lora(zimage, names)
    trained = _image(components.pipeline())
    files = save_lora(components, tmp_path / "output", "mine", metadata={"ss_output_name": "mine", **RT.kohya_metadata(False)})
    assert np.abs(_image(_pipe(zimage)) - trained).max() > 0.01  # the LoRA changes the image
    for source in (files.single_file, files.diffusers.parent):
        pipe = _pipe(zimage)
        pipe.load_lora_weights(str(source))
        np.testing.assert_allclose(_image(pipe), trained, atol=1e-5)


def test_the_comfyui_file_names_every_module_as_comfyui_maps_z_image(zimage):
    components = _trained_lora(zimage, ["attention.to_q", "attention.to_out.0", "feed_forward.w1", "all_x_embedder.2-1", "all_final_layer.2-1.linear"])
    comfy = lora_files(components).kohya
    assert all(k.startswith("diffusion_model.") for k in comfy)
    modules = {k.removeprefix("diffusion_model.").rsplit(".", 2)[0] if k.endswith(".weight") else k.removeprefix("diffusion_model.").rsplit(".", 1)[0] for k in comfy}
    assert {"layers.0.attention.to_q", "context_refiner.0.attention.to_out.0", "noise_refiner.0.feed_forward.w1", "all_x_embedder.2-1", "all_final_layer.2-1.linear"} <= modules
    for module in modules:  # ComfyUI's z_image_to_diffusers table: each LoRA module is lora_down, lora_up and alpha
        assert {f"diffusion_model.{module}.{s}" for s in ("lora_down.weight", "lora_up.weight", "alpha")} <= set(comfy)
    assert float(comfy["diffusion_model.layers.0.attention.to_q.alpha"]) == 2.0
    metadata = RT.kohya_metadata(False, "lora", "z-image")
    assert metadata["ss_base_model_version"] == "zimage" and metadata["modelspec.architecture"] == "z-image/lora"


@pytest.mark.parametrize("kind", ["loha", "lokr"])
def test_loha_and_lokr_files_read_back_into_the_adapter(zimage, kind):
    from core.train.outputs.files import adapters

    components = _trained_lora(zimage, ["attention.to_q", "feed_forward.w3"], kind)
    found = adapters(components, components.denoiser, [])
    comfy = RT.lora_files(found, dict(components.denoiser.config)).kohya
    marker = "hada_w1_a" if kind == "loha" else "lokr_w1"
    assert f"diffusion_model.layers.1.attention.to_q.{marker}" in comfy
    back = RT.lora_from_file(comfy, found[0], dict(components.denoiser.config))
    for key, tensor in found[0].state.items():
        torch.testing.assert_close(back[key].float(), tensor.float())


@pytest.mark.slow
def test_a_lora_run_trains_samples_saves_and_resumes_with_the_same_losses(zimage, tmp_path, kohya_dataset):
    from tests.test_train_resume import stop_after

    data = kohya_dataset(((2, "sks dog", 2),))
    settings = {"cache_latents": True, "cache_text_encoder_outputs": True, "lora_targets": "attn_ff"}
    schedule = {"epochs": 2, "sample_every_steps": 4, "lr_scheduler": "cosine"}
    prompts = ["a photo of sks dog --w 64 --h 64 --s 2"]
    whole = make_run(tmp_path / "whole", zimage, data, "zimage", settings=settings, schedule=schedule, prompts=prompts)
    assert train(whole) == 0
    assert status(whole)["state"] == "finished"
    losses = {m["step"]: m["loss"] for m in metrics(whole, "step")}
    assert len(losses) == 8
    assert [s["step"] for s in metrics(whole, "sample")] == [4, 8] and all((whole / s["path"]).is_file() for s in metrics(whole, "sample"))
    assert (whole / "output" / "tiny.safetensors").is_file() and (whole / "output" / "diffusers" / "pytorch_lora_weights.safetensors").is_file()

    run = make_run(tmp_path / "run", zimage, data, "zimage", settings=settings, schedule={**schedule, "sample_every_steps": 0})
    watcher = stop_after(run, 3)
    assert train(run) == 0
    watcher.join()
    assert status(run)["state"] == "stopped"
    assert train(run) == 0
    resumed = {m["step"]: m["loss"] for m in metrics(run, "step")}
    assert sorted(resumed) == list(range(1, 9))
    for step, loss in resumed.items():
        assert loss == pytest.approx(losses[step], rel=1e-4)


def _plan(capsys, *argv: str) -> dict:
    import json

    from cli.main import main

    assert main(["plan", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_plan_picks_a_zimage_recipe_without_weights_and_says_how_to_train_turbo(capsys, tmp_path, monkeypatch, kohya_dataset):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    turbo = _plan(capsys, "--model", "z-image-turbo", "--method", "lora", "--gpus", "1x24GB", "--data", str(kohya_dataset()))
    assert turbo["model_family"] == "zimage" and turbo["recipe"].startswith("zimage-lora-") and turbo["fits"] is True
    assert 12 < turbo["vram_estimate_gb"] <= 24 and turbo["schedule"][0]["eta_s"] > 0
    assert any(w.startswith("Z-Image Turbo is step-distilled") and "Z-Image Base" in w for w in turbo["warnings"])
    base = _plan(capsys, "--model", "z-image", "--method", "lora", "--gpus", "1x48GB")
    assert base["fits"] is True and not any("step-distilled" in w for w in base["warnings"])
    # 8 GB: the bf16 transformer alone is 12.3 GB, so the plan streams layers (and may quantize) to fit
    small = _plan(capsys, "--model", "z-image", "--method", "lora", "--gpus", "1x8GB")
    assert small["fits"] is True and small["vram_estimate_gb"] <= 8 and small["memory"]["techniques"]
    full = _plan(capsys, "--model", "z-image", "--method", "finetune", "--gpus", "1x48GB")
    assert full["recipe"] == "zimage-finetune-48gb" and full["fits"] is True


@pytest.mark.slow
def test_the_zimage_demo_prepares_its_own_tiny_model_and_trains(tmp_path, zimage, tiny_captioners):
    import shutil

    import tomlkit

    from core.demo import prepare_demo, workspace

    ws = workspace(tmp_path / "demo", "zimage")
    shutil.copytree(zimage, ws.model)
    shutil.copytree(tiny_captioners["florence2"], ws.captioner)
    prepared = prepare_demo(tmp_path / "demo", ["schedule.max_steps=2", "schedule.sample_every_steps=2", "schedule.save_every_epochs=0"], "zimage")
    config = tomlkit.parse(prepared.config.read_text())
    assert config["model"]["family"] == "zimage" and config["model"]["path"] == str(tmp_path / "demo" / "model-zimage")
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.toml").write_text(prepared.config.read_text())
    assert train(run) == 0
    assert status(run)["state"] == "finished" and [s["step"] for s in metrics(run, "sample")][-1] == 2


@pytest.mark.slow
def test_two_processes_train_zimage_with_the_shared_text_cache(zimage, tmp_path, kohya_dataset):
    from tests.train_helpers import launch

    data = kohya_dataset(((2, "sks dog", 2), (2, "red circle", 2)))
    run = make_run(tmp_path / "run", zimage, data, "zimage", settings={"cache_latents": True, "cache_text_encoder_outputs": True}, schedule={"epochs": 1}, processes=2)
    result = launch(run, 2, env={"XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr[-3000:]
    assert status(run)["state"] == "finished"
    assert [m["step"] for m in metrics(run, "step")] == [1, 2, 3, 4]  # 8 items over 2 processes, batch 1
    assert (run / "output" / "tiny.safetensors").is_file()


def test_the_wizard_offers_both_variants_and_the_methods_zimage_trains(tmp_path):
    from core.gpu import resolve
    from tui.wizard_state import WizardState

    state = WizardState(gpus=resolve("1x24GB"), base_dir=tmp_path)
    for model in ("z-image-turbo", "z-image"):
        assert state.set_model(model) == "zimage" and state.planning_only
    assert state.methods() == ("lora", "finetune") and state.settings["resolution"] == 1024


@pytest.mark.slow
def test_a_de_distill_adapter_is_merged_into_the_base_before_training(zimage, tmp_path, kohya_dataset):
    adapter = _trained_lora(zimage, ["attention.to_q", "attention.to_v", "feed_forward.w2"])
    files = save_lora(adapter, tmp_path / "adapter", "zimage_turbo_training_adapter")
    merged = load_components(str(zimage), settings={"merge_lora": str(files.single_file)})
    assert not any("lora_" in name for name, _ in merged.denoiser.named_parameters())
    with torch.no_grad():
        noisy = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(3))
        text = RT.encode_text(merged.text_encoders, RT.tokenize(merged.tokenizers, ["a dog"]), 1)
        extra = RT.extra_conditioning(text, {}, "cpu", {})
        timesteps = torch.tensor([500.0])
        with_adapter = RT.predict(adapter.denoiser, noisy, timesteps, text.prompt_embeds, extra)
        torch.testing.assert_close(RT.predict(merged.denoiser, noisy, timesteps, text.prompt_embeds, extra), with_adapter, atol=1e-5, rtol=1e-4)
    with pytest.raises(UserError, match=r"settings\.merge_lora"):
        load_components(str(zimage), settings={"merge_lora": str(tmp_path / "missing.safetensors")})

    data = kohya_dataset(((1, "sks dog", 2),))
    run = make_run(tmp_path / "run", zimage, data, "zimage", settings={"merge_lora": str(files.single_file)}, schedule={"max_steps": 2})
    assert train(run) == 0 and status(run)["state"] == "finished"
    from safetensors.torch import load_file

    trained = {k.rsplit(".", 2)[0] for k in load_file(str(run / "output" / "tiny.safetensors")) if k.endswith("lora_down.weight")}
    assert "diffusion_model.layers.0.attention.to_k" in trained  # the run's own adapter (attn), not the merged one's modules only
