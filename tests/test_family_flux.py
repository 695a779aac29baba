"""FLUX.1 (dev, schnell): loading what users have, detection, the objective, LoRA files both layouts, training through `sdtui train`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from core.errors import UserError
from core.families import runtime, spec
from core.families.detect import detect_family
from core.families.flux import layout
from core.families.protocol import AdapterWeights, FamilyRuntime
from core.train.model.loading import load_components
from tests.train_helpers import REPO, make_run, metrics, train, weight_hashes

FLUX = runtime("flux")

#: sd-scripts' networks/lora_flux.py and ComfyUI's comfy/lora.py name a FLUX LoRA's modules
#: ``lora_unet_`` + the BFL module with dots as underscores; these are a double and a single block's.
DOUBLE_BLOCK_NAMES = {
    f"lora_unet_double_blocks_0_{m}"
    for m in ("img_attn_qkv", "img_attn_proj", "img_mlp_0", "img_mlp_2", "img_mod_lin", "txt_attn_qkv", "txt_attn_proj", "txt_mlp_0", "txt_mlp_2", "txt_mod_lin")
}
SINGLE_BLOCK_NAMES = {f"lora_unet_single_blocks_1_{m}" for m in ("linear1", "linear2", "modulation_lin")}


def bfl_file(model: Path, target: Path, dtype: torch.dtype | None = None, prefix: str = "") -> Path:
    """The tiny model's transformer as a BFL-layout file (optionally cast, e.g. fp8, and prefixed as ComfyUI's full checkpoints)."""
    from diffusers import FluxTransformer2DModel

    transformer = FluxTransformer2DModel.from_pretrained(model, subfolder="transformer")
    state = layout.to_original(transformer.state_dict(), dict(transformer.config), layout.FLUX_GLOBAL)
    save_file({prefix + k: (v.to(dtype) if dtype is not None else v).contiguous() for k, v in state.items()}, str(target))
    return target


def test_flux_implements_the_family_contract_and_offers_only_its_methods():
    assert isinstance(FLUX, FamilyRuntime)
    flux = spec("flux")
    assert flux.methods == ("lora", "finetune")
    with pytest.raises(UserError, match="does not train with textual_inversion"):
        flux.check_method("textual_inversion")
    with pytest.raises(UserError, match="does not train with dreambooth"):
        flux.check_method("dreambooth")
    assert (flux.bucket_step, flux.latent_channels, flux.denoiser) == (16, 16, "transformer")
    assert flux.max_tokens("text_encoder_2", "flux-dev") == 512 and flux.max_tokens("text_encoder_2", "flux-schnell") == 256
    assert FLUX.sample_defaults("flux-schnell") == (4, 0.0) and FLUX.sample_defaults("flux-dev") == (28, 3.5)
    real = flux.component_configs("flux-dev")["transformer"]
    assert (real["num_layers"], real["num_single_layers"], real["num_attention_heads"] * real["attention_head_dim"]) == (19, 38, 3072)
    assert flux.component_configs("flux-schnell")["transformer"]["guidance_embeds"] is False


def test_the_tiny_model_loads_from_its_folder_and_a_bfl_file_in_bf16_and_fp8(tiny_models, tmp_path):
    model = tiny_models("flux")
    assert detect_family(str(model)) == "flux"
    folder = load_components(str(model), settings={})
    assert (folder.family, folder.variant, folder.prediction_type) == ("flux", "flux-dev", "flow")
    reference = folder.denoiser.state_dict()
    import shutil

    beside = tmp_path / "flux1-tiny"
    shutil.copytree(model, beside)
    for weights in (beside / "transformer").glob("*.safetensors"):
        weights.unlink()
    for dtype, prefix, tolerance in ((None, "", 0.0), (torch.bfloat16, "model.diffusion_model.", 1e-2), (torch.float8_e4m3fn, "", 0.1)):
        file = bfl_file(model, tmp_path / "flux1-tiny.safetensors", dtype, prefix)
        assert detect_family(str(file)) == "flux"
        loaded = load_components(str(file), settings={})
        state = loaded.denoiser.state_dict()
        assert set(state) == set(reference)
        assert all(state[k].dtype == torch.float32 for k in state), "fp8 and bf16 weights are upcast for training"
        worst = max(float((state[k] - reference[k]).abs().max() / (reference[k].abs().max() + 1e-12)) for k in state)
        assert worst <= tolerance, (dtype, worst)


def test_split_files_replace_the_parts_of_the_model_path(tiny_models, tmp_path):
    from transformers import T5EncoderModel

    model = tiny_models("flux")
    transformer = bfl_file(model, tmp_path / "flux1-dev.safetensors")
    t5 = T5EncoderModel.from_pretrained(model, subfolder="text_encoder_2")
    with torch.no_grad():
        for p in t5.parameters():
            p.mul_(0.5)
    save_file({k: v.clone().contiguous() for k, v in t5.state_dict().items() if k != "encoder.embed_tokens.weight"}, str(tmp_path / "t5xxl_fp16.safetensors"))
    loaded = load_components(str(model), settings={}, split_files={"denoiser": str(transformer), "t5xxl": str(tmp_path / "t5xxl_fp16.safetensors"), "clip_l": ""})
    torch.testing.assert_close(loaded.text_encoders[1].state_dict()["shared.weight"], t5.state_dict()["shared.weight"])
    with pytest.raises(UserError, match=r"model.clip_g names a text encoder FLUX\.1 does not have"):
        load_components(str(model), settings={}, split_files={"clip_g": str(tmp_path / "t5xxl_fp16.safetensors")})
    with pytest.raises(UserError, match=r"does not exist; fix model\.text_encoders\.text_encoder_2"):
        load_components(str(model), settings={}, split_files={"t5xxl": str(tmp_path / "missing.safetensors")})


def test_schnell_is_told_apart_by_its_missing_guidance_embedding(tmp_path):
    from core.families.detect import family_of_configs

    assert FLUX.variant_of({"guidance_embeds": False}) == "flux-schnell" and FLUX.variant_of({"guidance_embeds": True}) == "flux-dev"
    assert family_of_configs({"transformer", "text_encoder_2"}, "FluxPipeline", {"_class_name": "FluxTransformer2DModel"}) == "flux"
    assert detect_family("black-forest-labs/FLUX.1-schnell") == "flux"


def test_the_objective_shifts_by_resolution_on_dev_and_refuses_clip_skip(tiny_models):
    components = load_components(str(tiny_models("flux")), settings={"flow_sampling": "uniform"})
    objective = components.objective
    assert objective.token_shift == (0.5, 1.15, 256, 4096, 2)
    gen = torch.Generator().manual_seed(0)
    small = objective.sigmas(2000, gen, "cpu", (32, 32)).mean()
    large = objective.sigmas(2000, torch.Generator().manual_seed(0), "cpu", (128, 128)).mean()
    assert large > small, "more image tokens shift σ towards noise"
    with pytest.raises(UserError, match=r"settings\.clip_skip"):
        load_components(str(tiny_models("flux")), settings={"clip_skip": 2})


def test_tokens_of_schnell_stop_at_256_and_the_t5_sees_its_padding(tiny_models):
    components = load_components(str(tiny_models("flux")), settings={})
    dev = FLUX.tokenize(components.tokenizers, ["a photo of sks dog"], "flux-dev")
    schnell = FLUX.tokenize(components.tokenizers, ["a photo of sks dog"], "flux-schnell")
    assert [t.shape[1] for t in dev] == [77, 512] and [t.shape[1] for t in schnell] == [77, 256]
    embeddings = FLUX.encode_text(components.text_encoders, schnell, 1)
    assert embeddings.prompt_embeds.shape == (1, 256, 32) and embeddings.pooled_prompt_embeds.shape == (1, 32)


def test_block_selection_adapts_only_the_chosen_blocks(tiny_models):
    components = load_components(str(tiny_models("flux")), settings={})
    targets = spec("flux").lora_targets_of("transformer", "attn_ff")
    names = FLUX.lora_target_modules(components.denoiser, targets, {"train_double_block_indices": "none", "train_single_block_indices": "1", "lora_targets": "attn_ff"})
    assert names and all(n.startswith("single_transformer_blocks.1.") for n in names)
    assert "single_transformer_blocks.1.proj_out" in names and "proj_out" not in names, "the final layer is no MLP"
    everything = FLUX.lora_target_modules(components.denoiser, spec("flux").lora_targets_of("transformer", "all"), {"lora_targets": "all"})
    assert {"proj_out", "norm_out.linear", "x_embedder", "transformer_blocks.0.norm1.linear", "single_transformer_blocks.0.norm.linear"} <= set(everything)
    with pytest.raises(UserError, match="names block 5, but the model has blocks 0-1"):
        FLUX.lora_target_modules(components.denoiser, targets, {"train_single_block_indices": "0,5"})
    with pytest.raises(UserError, match="select no block"):
        FLUX.lora_target_modules(components.denoiser, targets, {"train_double_block_indices": "none", "train_single_block_indices": "none"})


def _trained_adapter(components, targets: str = "all", **settings):
    """The tiny transformer with a LoRA of random (non-zero) weights on ``targets``."""
    from core.train.model.methods import adapter_config
    from core.train.outputs.files import adapters

    run_settings = {"lora_rank": 2, "lora_alpha": 3.0, "lora_targets": targets, **settings}
    names = FLUX.lora_target_modules(components.denoiser, spec("flux").lora_targets_of("transformer", targets), run_settings)
    FLUX.add_adapter(components.denoiser, adapter_config(run_settings, names))
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in components.denoiser.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn_like(p) * 0.1)
    return adapters(components)


def _merged_bfl(base: dict, kohya: dict) -> dict:
    """The BFL weights with a kohya LoRA merged as ComfyUI merges it (W + up·down · alpha / rank)."""
    merged = dict(base)
    for key in kohya:
        if key.endswith(".lora_down.weight"):
            stem = key[: -len(".lora_down.weight")]
            down, up = kohya[key], kohya[stem + ".lora_up.weight"]
            weight = stem.removeprefix("lora_unet_")
            target = next(k for k in base if k.endswith(".weight") and k[: -len(".weight")].replace(".", "_") == weight)
            merged[target] = base[target] + up @ down * (float(kohya[stem + ".alpha"]) / down.shape[0])
    return merged


def test_the_kohya_file_names_every_module_as_sd_scripts_and_comfyui_and_merges_to_the_trained_model(tiny_models):
    components = load_components(str(tiny_models("flux")), settings={})
    config = dict(components.denoiser.config)
    base = layout.to_original(dict(components.denoiser.state_dict()), config, layout.FLUX_GLOBAL)
    trained = _trained_adapter(components)
    files = FLUX.lora_files(trained, config)
    bases = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in files.kohya}
    bfl_modules = {"lora_unet_" + k[: -len(".weight")].replace(".", "_") for k, v in base.items() if k.endswith(".weight") and v.ndim == 2}
    assert bases == bfl_modules, "every linear BFL module, and nothing else, under its sd-scripts/ComfyUI name"
    assert bases >= DOUBLE_BLOCK_NAMES | SINGLE_BLOCK_NAMES
    assert files.kohya["lora_unet_single_blocks_1_linear1.lora_down.weight"].shape[0] == 4 * 2, "q, k, v and the MLP fused: rank 4 × 2"
    from peft.tuners.tuners_utils import BaseTunerLayer

    merged_model = components.denoiser.to(torch.float32)
    for module in merged_model.modules():
        if isinstance(module, BaseTunerLayer):
            module.merge()
    expected = layout.to_original({k.replace(".base_layer", ""): v for k, v in merged_model.state_dict().items() if "lora_" not in k}, config, layout.FLUX_GLOBAL)
    merged = _merged_bfl(base, files.kohya)
    for key in expected:
        torch.testing.assert_close(merged[key], expected[key], rtol=1e-5, atol=1e-5, msg=key)


def test_a_fused_kohya_file_reads_back_into_the_same_adapter(tiny_models):
    components = load_components(str(tiny_models("flux")), settings={})
    config = dict(components.denoiser.config)
    trained = _trained_adapter(components, "attn_ff")
    adapter = trained[0]
    files = FLUX.lora_files(trained, config)
    back = FLUX.lora_from_file(files.kohya, adapter, config)
    assert set(back) == set(adapter.state)
    for key, value in adapter.state.items():
        torch.testing.assert_close(back[key], value, msg=key)


def test_loha_keeps_fused_parts_under_diffusers_names_which_comfyui_maps_itself(tiny_models):
    """q/k/v cannot share one LoHa: each keeps its diffusers name (ComfyUI patches its rows of the fused
    weight); a whole BFL module takes its BFL name (tests/test_flux_lycoris_comfyui.py loads them all)."""
    components = load_components(str(tiny_models("flux")), settings={})
    trained = _trained_adapter(components, "attn", lora_type="loha")
    kohya = FLUX.lora_files(trained, dict(components.denoiser.config)).kohya
    assert "lora_transformer_transformer_blocks_0_attn_to_q.hada_w1_a" in kohya
    assert "lora_unet_double_blocks_0_img_attn_proj.hada_w1_a" in kohya
    assert not any(k.startswith("lora_unet_double_blocks_0_img_attn_qkv") for k in kohya)


def test_kohya_metadata_names_the_variant():
    dev, schnell = FLUX.kohya_metadata(False, "lora", "flux-dev"), FLUX.kohya_metadata(False, "lora", "flux-schnell")
    assert dev["ss_base_model_version"] == "flux1" and dev["modelspec.architecture"] == "flux-1-dev/lora"
    assert schnell["modelspec.architecture"] == "flux-1-schnell/lora"
    assert "modelspec.prediction_type" not in dev


@pytest.mark.slow
def test_a_lora_run_writes_samples_and_files_diffusers_and_the_kohya_reader_reproduce(tiny_models, kohya_dataset, tmp_path):
    from diffusers import FluxPipeline

    model = tiny_models("flux")
    data = kohya_dataset(((2, "a photo of sks dog", 2),))
    run = make_run(
        tmp_path / "run",
        model,
        data,
        "flux",
        settings={"lora_targets": "attn_ff", "lora_rank": 4, "lora_alpha": 2, "save_precision": "fp32"},
        schedule={"max_steps": 3, "sample_every_steps": 3},
        prompts=["a photo of sks dog --w 64 --h 64 --s 2 --d 5"],
    )
    assert train(run) == 0
    steps = metrics(run, "step")
    assert len(steps) == 3 and all(s["loss"] > 0 for s in steps)
    assert list((run / "samples").glob("*.png"))
    kohya = load_file(str(run / "output" / "tiny.safetensors"))
    assert any(k.startswith("lora_unet_double_blocks_0_img_attn_qkv") for k in kohya)

    def render(pipe: FluxPipeline) -> torch.Tensor:
        return pipe("a photo of sks dog", width=64, height=64, num_inference_steps=2, guidance_scale=3.5, generator=torch.Generator().manual_seed(1), output_type="pt").images

    pipe = FluxPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(run / "output" / "diffusers"))
    with_diffusers = render(pipe)

    components = load_components(str(model), settings={})
    from core.train.model.methods import adapter_config

    settings = {"lora_rank": 4, "lora_alpha": 2.0, "lora_targets": "attn_ff"}
    names = FLUX.lora_target_modules(components.denoiser, spec("flux").lora_targets_of("transformer", "attn_ff"), settings)
    config = adapter_config(settings, names)
    FLUX.add_adapter(components.denoiser, config)
    from peft.utils import set_peft_model_state_dict

    adapter = AdapterWeights("transformer", {}, config)
    from core.train.outputs.files import adapter_state

    adapter = AdapterWeights("transformer", adapter_state(components.denoiser)[0], config)
    set_peft_model_state_dict(components.denoiser, FLUX.lora_from_file(kohya, adapter, dict(components.denoiser.config)))
    ours = FLUX.pipeline(
        {
            "transformer": components.denoiser,
            "vae": components.vae,
            "text_encoder": components.text_encoders[0],
            "text_encoder_2": components.text_encoders[1],
            "tokenizer": components.tokenizers[0],
            "tokenizer_2": components.tokenizers[1],
            "scheduler": components.scheduler,
        }
    )
    torch.testing.assert_close(render(ours), with_diffusers, rtol=1e-5, atol=1e-5)
    plain = FluxPipeline.from_pretrained(model)
    plain.set_progress_bar_config(disable=True)
    assert not torch.allclose(render(plain), with_diffusers, atol=1e-4), "the LoRA changes the image"


@pytest.mark.slow
def test_a_killed_run_resumes_with_the_losses_of_an_uninterrupted_one(tiny_models, kohya_dataset, tmp_path):
    model = tiny_models("flux")
    data = kohya_dataset(((1, "a photo of sks dog", 3),))
    schedule = {"max_steps": 6, "save_every_steps": 2, "lr_scheduler": "cosine", "lr_warmup_steps": 1}
    whole = make_run(tmp_path / "whole", model, data, "flux", schedule=schedule)
    assert train(whole) == 0
    reference = {m["step"]: m["loss"] for m in metrics(whole, "step")}

    run = make_run(tmp_path / "run", model, data, "flux", schedule=schedule)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "core.train", str(run)], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (run / "checkpoints" / "step-2" / "state.json").is_file() and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(m["step"] for m in metrics(run, "step"))
    assert killed_at < 6, "killed before the end"
    assert train(run) == 0
    losses: dict[int, float] = {}
    for m in metrics(run, "step"):
        losses[m["step"]] = m["loss"]
    assert sorted(losses) == list(range(1, 7))
    for step, loss in losses.items():
        assert loss == pytest.approx(reference[step], rel=1e-4), step
    assert json.loads((run / "status.json").read_text())["state"] == "finished"


def test_plan_without_weights_composes_a_fit_on_24gb_and_fits_on_80gb(capsys):
    from cli.main import main

    # the bf16 transformer alone (22 GiB) does not fit a 4090: the picker streams or quantizes it
    assert main(["--gpus", "1x4090", "plan", "--model", "flux-schnell", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["fits"] is True and plan["memory"]["techniques"]
    assert main(["--gpus", "1xH100", "plan", "--model", "flux-dev", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["fits"] is True and plan["recipe"].startswith("flux-lora")


def test_attention_makes_the_flops_grow_faster_than_the_pixels():
    from core.plan.throughput import training_tflops_per_image

    settings = {"cache_latents": True, "cache_text_encoder_outputs": True, "gradient_checkpointing": False}
    half = training_tflops_per_image("flux", "lora", {**settings, "resolution": 512})
    full = training_tflops_per_image("flux", "lora", {**settings, "resolution": 1024})
    assert full == pytest.approx(2 * 125.0) and 4 < full / half < 16 * 0.5


@pytest.mark.slow
def test_the_demo_runs_the_whole_flow_on_the_tiny_flux(tmp_path, tiny_models, tiny_captioners):
    import shutil

    from core.demo import run_headless, workspace

    ws = workspace(tmp_path / "demo", "flux")
    shutil.copytree(tiny_models("flux"), ws.model)
    shutil.copytree(tiny_captioners["florence2"], ws.captioner)
    lines: list[str] = []
    code = run_headless(tmp_path / "demo", overrides=["schedule.max_steps=3", "schedule.sample_every_steps=0", "schedule.sample_at_start=false"], out=lines.append, family="flux")
    assert code == 0, lines
    assert ws.model.name == "model-flux" and any("finished" in line for line in lines)


def test_the_cli_refuses_a_method_flux_does_not_train_in_one_sentence(capsys):
    from cli.main import main

    assert main(["plan", "--model", "flux-dev", "--method", "dreambooth"]) == 2
    err = capsys.readouterr().err
    assert "the flux family does not train with dreambooth; use one of lora, finetune" in err and "Traceback" not in err


@pytest.mark.slow
@pytest.mark.xdist_group("ddp")
def test_two_processes_train_the_tiny_flux_to_the_same_weights(tmp_path, tiny_models, kohya_dataset):
    from tests.train_helpers import launch

    data = kohya_dataset(((1, "a photo of sks dog", 4),))
    run = make_run(tmp_path / "run", tiny_models("flux"), data, "flux", schedule={"max_steps": 2}, processes=2)
    hashes = tmp_path / "hashes.txt"
    done = launch(run, 2, args=["--weights-hash", str(hashes)], timeout=420)
    assert done.returncode == 0, done.stderr[-3000:]
    final = weight_hashes(hashes, 2)
    assert sorted(rank for rank, _ in final) == ["0", "1"] and len({digest for _, digest in final}) == 1
    assert [m["step"] for m in metrics(run, "step")] == [1, 2]


def test_train_text_encoder_trains_clip_l_and_never_t5(tiny_models):
    from core.memory import data
    from core.memory.trainable import adapter_parameters, trainable
    from core.train.model.methods import setup_method

    components = load_components(str(tiny_models("flux")), settings={})
    method = setup_method("lora", components, {"train_text_encoder": True, "lora_rank": 2})
    assert set(method.modules) == {"transformer", "text_encoder"}
    assert not any(p.requires_grad for p in components.text_encoders[1].parameters()), "T5 stays frozen"
    clip_width = data.params()["flux"]["text_encoder"]["lora_width"]["attn"]
    with_te, without = trainable("flux", "lora", {"train_text_encoder": True}), trainable("flux", "lora", {})
    assert with_te.params - without.params == adapter_parameters("lora", 16, clip_width)


def test_a_flow_model_keeps_its_euler_sampler_and_refuses_ddpm_ones(tiny_models):
    from core.train.outputs.sampling import sampler_scheduler

    scheduler = load_components(str(tiny_models("flux")), settings={}).scheduler
    assert sampler_scheduler("euler", scheduler) is scheduler and sampler_scheduler("default", scheduler) is scheduler
    with pytest.raises(ValueError, match="is for DDPM models"):
        sampler_scheduler("euler_a", scheduler)


def test_block_selection_is_a_run_setting_only_flux_shaped_families_take():
    from core.settings import family_problem

    assert family_problem("flux", "auto", {"train_single_block_indices": "0-19"}) is None
    assert family_problem("sdxl", "auto", {"train_double_block_indices": "all"}) is None
    assert family_problem("sdxl", "auto", {"train_double_block_indices": "0-3"}) == (
        "settings.train_double_block_indices selects FLUX.1-style blocks and the sdxl family has none; remove it"
    )


@pytest.mark.slow
def test_a_run_with_block_selection_trains_only_those_blocks(tiny_models, kohya_dataset, tmp_path):
    data = kohya_dataset(((1, "a photo of sks dog", 2),))
    run = make_run(tmp_path / "run", tiny_models("flux"), data, "flux", settings={"train_double_block_indices": "none", "train_single_block_indices": "1"}, schedule={"max_steps": 1})
    assert train(run) == 0
    keys = load_file(str(run / "output" / "tiny.safetensors"))
    assert keys and {k.split(".")[0] for k in keys} == {"lora_unet_single_blocks_1_linear1"}
