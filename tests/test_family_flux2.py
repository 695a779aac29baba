"""FLUX.2: the original (ComfyUI) layout of the transformer and of its LoRA files, detection, the variants' sizes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from core.families import flux2
from core.families.detect import detect_family, family_of_file, family_of_folder
from core.families.flux2 import layout
from core.families.flux2 import lora as lora_layout
from core.families.protocol import AdapterWeights


def tiny_transformer(guidance: bool = False):
    from diffusers import Flux2Transformer2DModel

    torch.manual_seed(0)
    model = Flux2Transformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=24,
        timestep_guidance_channels=32,
        axes_dims_rope=(4, 4, 4, 4),
        guidance_embeds=guidance,
    )
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.1)
    return model


def test_the_original_layout_is_what_diffusers_converts_back() -> None:
    from diffusers.loaders.single_file_utils import convert_flux2_transformer_checkpoint_to_diffusers

    model = tiny_transformer(guidance=True)
    original = layout.to_original(model.state_dict())
    assert "double_blocks.0.img_attn.qkv.weight" in original and "single_blocks.1.linear1.weight" in original
    assert "double_blocks.0.img_attn.norm.query_norm.scale" in original and "final_layer.adaLN_modulation.1.weight" in original
    back = convert_flux2_transformer_checkpoint_to_diffusers(dict(original))
    ours = model.state_dict()
    assert set(back) == set(ours)
    assert all(torch.equal(back[k], ours[k]) for k in ours)


def _adapter(model, kind: str = "lora", targets=flux2.LORA_TARGETS["denoiser"]["attn_ff"]) -> AdapterWeights:
    from peft import LoHaConfig, LoKrConfig, LoraConfig
    from peft.utils import get_peft_model_state_dict

    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and any(n.endswith("." + t) or n == t for t in targets)]
    config = {
        "lora": LoraConfig(r=4, lora_alpha=8.0, target_modules=names, init_lora_weights="gaussian"),
        "loha": LoHaConfig(r=4, alpha=8.0, target_modules=names, init_weights=False),
        "lokr": LoKrConfig(r=4, alpha=8.0, target_modules=names, init_weights=False),
    }[kind]
    model.add_adapter(config)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if any(m in name for m in ("lora_", "hada_", "lokr_")):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    state = {k.replace(".default", ""): v for k, v in get_peft_model_state_dict(model).items()}
    return AdapterWeights("transformer", state, config)


def _apply_comfy(original: dict, comfy: dict) -> dict:
    """ComfyUI's arithmetic: weight += up @ down * alpha / rank, the LoHa product * alpha / rank, or + diff."""
    out = dict(original)
    for key in [k for k in comfy if k.endswith(".lora_down.weight")]:
        base = key.removesuffix(".lora_down.weight")
        down, up = comfy[key].float(), comfy[base + ".lora_up.weight"].float()
        scale = float(comfy[base + ".alpha"]) / down.shape[0]
        target = base.removeprefix("diffusion_model.") + ".weight"
        out[target] = out[target] + up @ down * scale
    for key in [k for k in comfy if k.endswith(".hada_w1_a")]:
        base = key.removesuffix(".hada_w1_a")
        rank = comfy[base + ".hada_w1_b"].shape[0]
        delta = (comfy[key] @ comfy[base + ".hada_w1_b"]) * (comfy[base + ".hada_w2_a"] @ comfy[base + ".hada_w2_b"])
        target = base.removeprefix("diffusion_model.") + ".weight"
        out[target] = out[target] + delta * float(comfy[base + ".alpha"]) / rank
    for key in [k for k in comfy if k.endswith(".diff")]:
        target = key.removeprefix("diffusion_model.").removesuffix(".diff") + ".weight"
        out[target] = out[target] + comfy[key]
    return out


@pytest.mark.parametrize("kind", ["lora", "loha"])
def test_a_comfyui_lora_file_changes_the_original_weights_as_the_adapter_does(kind: str) -> None:
    model = tiny_transformer()
    base = layout.to_original({k: v.clone() for k, v in model.state_dict().items()})
    adapter = _adapter(model, kind)
    comfy = lora_layout.comfy_state_dict([adapter], "transformer")
    assert all(k.startswith("diffusion_model.") for k in comfy)
    if kind == "lora":
        assert comfy["diffusion_model.double_blocks.0.img_attn.qkv.lora_down.weight"].shape[0] == 12  # q, k, v stacked
    else:
        assert "diffusion_model.double_blocks.0.txt_attn.qkv.diff" in comfy
    model.fuse_lora() if kind == "lora" else _merge(model)
    merged = layout.to_original({k.replace(".base_layer", ""): v for k, v in model.state_dict().items() if not any(m in k for m in ("lora_", "hada_"))})
    applied = _apply_comfy(base, comfy)
    for key, tensor in merged.items():
        assert torch.allclose(applied[key], tensor, atol=1e-5), key


def _merge(model) -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.merge()


def test_a_comfyui_lora_file_reads_back_into_the_adapter() -> None:
    model = tiny_transformer()
    adapter = _adapter(model)
    comfy = lora_layout.comfy_state_dict([adapter], "transformer")
    back = lora_layout.from_comfy(comfy, adapter)
    assert set(back) == set(adapter.state)
    for key, tensor in adapter.state.items():
        if key.endswith("lora_A.weight"):
            module = key.removesuffix(".lora_A.weight")
            ours = adapter.state[module + ".lora_B.weight"] @ tensor
            theirs = back[module + ".lora_B.weight"] @ back[key]
            assert torch.allclose(ours, theirs, atol=1e-6), module


def _folder(root: Path, pipeline: str, transformer: dict) -> Path:
    root.mkdir(parents=True)
    (root / "model_index.json").write_text(json.dumps({"_class_name": pipeline, "transformer": ["diffusers", "Flux2Transformer2DModel"]}))
    (root / "transformer").mkdir()
    (root / "transformer" / "config.json").write_text(json.dumps({"_class_name": "Flux2Transformer2DModel", **transformer}))
    return root


def _safetensors(path: Path, keys: list[str]) -> Path:
    from safetensors.torch import save_file

    save_file({k: torch.zeros(1) for k in keys}, str(path))
    return path


def test_flux2_models_are_detected_without_torch_clues(tmp_path: Path) -> None:
    assert family_of_folder(_folder(tmp_path / "klein", "Flux2KleinPipeline", flux2.TRANSFORMER_KLEIN_4B)) == "flux2"
    assert family_of_folder(_folder(tmp_path / "dev", "Flux2Pipeline", {})) == "flux2"
    bfl = _safetensors(tmp_path / "flux-2-klein-4b-fp8.safetensors", ["double_blocks.0.img_attn.qkv.weight", "double_stream_modulation_img.lin.weight"])
    assert family_of_file(bfl) == "flux2"
    comfy = _safetensors(tmp_path / "comfy.safetensors", ["model.diffusion_model.single_stream_modulation.lin.weight"])
    assert family_of_file(comfy) == "flux2"
    assert detect_family("black-forest-labs/FLUX.2-klein-base-4B") == "flux2"
    assert [detect_family(v) for v in ("flux2-klein-4b", "flux2-klein-9b", "flux2-dev")] == ["flux2"] * 3


def test_a_flux1_file_stays_flux1(tmp_path: Path) -> None:
    flux1 = _safetensors(tmp_path / "flux1-dev.safetensors", ["double_blocks.0.img_attn.qkv.weight", "double_blocks.0.img_mod.lin.weight"])
    assert family_of_file(flux1) == "flux"
    assert detect_family("black-forest-labs/FLUX.1-dev") == "flux"


def test_the_variants_have_their_own_sizes_and_dev_its_own_text_encoder() -> None:
    assert flux2.SPEC.component_configs("flux2-klein-9b")["transformer"]["joint_attention_dim"] == 12288
    dev = flux2.SPEC.component_configs("flux2-dev")
    assert dev["text_encoder"]["model_type"] == "mistral3" and "head_dim" not in dev["text_encoder"]
    assert flux2.SPEC.component_class_names("flux2-dev")["text_encoder"] == "transformers.Mistral3ForConditionalGeneration"
    assert flux2.SPEC.component_class_names()["text_encoder"] == "transformers.Qwen3ForCausalLM"


CAPTIONS = ["a photo of sks dog", "a cat"]


def test_klein_text_states_and_latents_are_the_pipelines_own(tiny_models) -> None:
    from core.train.model.loading import load_components

    components = load_components(str(tiny_models("flux2")))
    family = components.runtime
    ours = family.encode_text(components.text_encoders, family.tokenize(components.tokenizers, CAPTIONS, components.variant), 1)
    pipe = components.pipeline()
    states, _ = pipe.encode_prompt(CAPTIONS, device="cpu")
    assert ours.prompt_embeds.shape == (2, 512, 96) and torch.allclose(ours.prompt_embeds, states, atol=1e-6)
    pixels = torch.rand(2, 3, 64, 64) * 2 - 1
    latents = family.encode_latents(components.vae, pixels)
    assert torch.allclose(latents, pipe._encode_vae_image(pixels, None), atol=1e-6)  # patchified, batch-norm normalised
    assert family.decode_latents(components.vae, latents).shape == (2, 3, 64, 64)
    assert components.objective.token_shift == (0.5, 1.15, 256, 4096, 1)  # musubi-tuner's flux2_shift


@pytest.mark.slow
def test_a_bfl_transformer_file_loads_bf16_and_fp8(tmp_path, tiny_models) -> None:
    from safetensors.torch import load_file, save_file

    from core.families import runtime
    from core.families.protocol import ModelSource
    from core.train.model.loading import load_components
    from core.train.model.tiny import build_tiny_single_file

    folder = tiny_models("flux2")
    reference = load_components(str(folder)).denoiser.state_dict()
    single = build_tiny_single_file("flux2", tmp_path / "flux-2-klein-4b.safetensors")
    assert "double_blocks.0.img_attn.qkv.weight" in load_file(str(single))
    assert family_of_file(single) == "flux2"
    loaded = load_components(str(single)).denoiser.state_dict()
    assert all(torch.equal(loaded[k], reference[k]) for k in reference)
    fp8 = tmp_path / "flux-2-klein-4b-fp8.safetensors"
    save_file({f"model.diffusion_model.{k}": v.to(torch.float8_e4m3fn) for k, v in load_file(str(single)).items()}, str(fp8))
    split = runtime("flux2").load(ModelSource(str(folder), denoiser=str(fp8)))
    for key, tensor in split.denoiser.state_dict().items():
        assert torch.equal(tensor, reference[key].to(torch.float8_e4m3fn).float()), key


def _image(pipe) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompt="a photo of sks dog", num_inference_steps=2, height=64, width=64, guidance_scale=1.0, generator=torch.Generator().manual_seed(1), output_type="np")
    return np.asarray(out.images[0])


@pytest.mark.slow
def test_a_klein_lora_run_samples_and_its_files_reproduce_it_in_diffusers_and_comfyui(tmp_path, tiny_models, kohya_dataset) -> None:
    from diffusers import Flux2KleinPipeline
    from peft import LoraConfig
    from peft.utils import set_peft_model_state_dict
    from safetensors import safe_open
    from safetensors.torch import load_file

    from core.train.model.loading import load_components
    from core.train.outputs.files import adapter_state
    from tests.train_helpers import make_run, metrics, train

    model = tiny_models("flux2")
    settings = {"lora_targets": "attn_ff", "lora_alpha": 2, "train_single_block_indices": "1"}
    schedule = {"max_steps": 3, "sample_every_steps": 3, "learning_rate": 3e-2}
    run = make_run(tmp_path / "run", model, kohya_dataset(((2, "sks dog", 2),)), "flux2", "lora", settings=settings, schedule=schedule, prompts=["a photo of sks dog --w 64 --h 64 --s 2"])
    assert train(run) == 0
    assert (run / metrics(run, "sample")[0]["path"]).is_file()
    comfy = run / "output" / "tiny.safetensors"
    with safe_open(str(comfy), "pt") as handle:
        keys, meta = list(handle.keys()), handle.metadata()
    assert "diffusion_model.double_blocks.0.img_attn.qkv.lora_down.weight" in keys and "diffusion_model.double_blocks.0.img_mlp.0.lora_up.weight" in keys
    assert not any(k.startswith("diffusion_model.single_blocks.0.") for k in keys) and any(k.startswith("diffusion_model.single_blocks.1.") for k in keys)
    assert meta["modelspec.architecture"] == "flux-2-klein-4b/lora"

    trained = load_components(str(model))
    family, denoiser = trained.runtime, trained.denoiser
    config = LoraConfig(r=4, lora_alpha=2, target_modules=family.lora_target_modules(denoiser, flux2.LORA_TARGETS["denoiser"]["attn_ff"], settings))
    denoiser.add_adapter(config)
    state, _ = adapter_state(denoiser)
    set_peft_model_state_dict(denoiser, family.lora_from_file(load_file(str(comfy)), AdapterWeights("transformer", state, config), dict(denoiser.config)))
    reference = _image(trained.pipeline())
    assert np.abs(reference - _image(Flux2KleinPipeline.from_pretrained(model))).max() > 1e-3
    pipe = Flux2KleinPipeline.from_pretrained(model)
    pipe.load_lora_weights(str(run / "output" / "diffusers"))
    np.testing.assert_allclose(_image(pipe), reference, atol=1e-5)
    # the ComfyUI file: ComfyUI's arithmetic over the original layout gives the trained weights
    base = layout.to_original(Flux2KleinPipeline.from_pretrained(model).transformer.state_dict())
    denoiser.fuse_lora()
    merged = layout.to_original({k.replace(".base_layer", ""): v for k, v in denoiser.state_dict().items() if "lora_" not in k})
    applied = _apply_comfy(base, load_file(str(comfy)))
    assert all(torch.allclose(applied[k], merged[k], atol=1e-5) for k in merged)


@pytest.fixture(scope="module")
def tiny_dev(tmp_path_factory) -> Path:
    """The tiny FLUX.2 dev: a Mistral 3 encoder with the locally built Mistral tokenizer, a guidance embedding."""
    from core.families.flux2.tiny import build_dev

    return build_dev(tmp_path_factory.mktemp("tiny-flux2-dev") / "model")


@pytest.mark.slow
def test_dev_reads_captions_as_flux2_pipeline_does_and_trains_a_lora_diffusers_reproduces(tmp_path, tiny_dev, kohya_dataset) -> None:
    from diffusers import Flux2Pipeline
    from safetensors import safe_open

    from core.train.model.loading import load_components
    from tests.train_helpers import make_run, train

    components = load_components(str(tiny_dev))
    assert components.variant == "flux2-dev"
    family = components.runtime
    ids = family.tokenize(components.tokenizers, CAPTIONS, components.variant)
    assert components.tokenizers[0].convert_ids_to_tokens(ids[0][0][:2].tolist()) == ["<s>", "[SYSTEM_PROMPT]"]
    ours = family.encode_text(components.text_encoders, ids, 1)
    states, _ = components.pipeline().encode_prompt(CAPTIONS, device="cpu")
    assert torch.allclose(ours.prompt_embeds, states, atol=1e-6)  # Mistral's template with the system prompt, layers 10/20/30

    run = make_run(tmp_path / "run", tiny_dev, kohya_dataset(((2, "sks dog", 2),)), "flux2", "lora", schedule={"max_steps": 2, "learning_rate": 3e-2})
    assert train(run) == 0
    with safe_open(str(run / "output" / "tiny.safetensors"), "pt") as handle:
        assert handle.metadata()["modelspec.architecture"] == "flux-2-dev/lora"
    pipe = Flux2Pipeline.from_pretrained(tiny_dev)
    base = _image(pipe)
    pipe.load_lora_weights(str(run / "output" / "diffusers"))
    assert np.abs(_image(pipe) - base).max() > 1e-4


def test_the_plan_sizes_each_variant_by_its_own_tables(tmp_path: Path) -> None:
    from core.families import planned_as
    from core.families.detect import variant_of_model
    from core.memory.estimator import estimate
    from core.plan.throughput import training_tflops_per_image

    sizes = [estimate(planned_as("flux2", v), "lora", {"resolution": 1024}).total_bytes for v in ("", "flux2-klein-9b", "flux2-dev")]
    assert sizes[0] < sizes[1] < sizes[2] and sizes[2] > 48 * 2**30 > sizes[1]
    assert training_tflops_per_image("flux2-dev", "lora", {}) > 5 * training_tflops_per_image("flux2", "lora", {})
    dev = _folder(tmp_path / "dev", "Flux2Pipeline", {**flux2.TRANSFORMER_KLEIN_4B, **flux2.SPEC.variant("flux2-dev").configs["transformer"]})
    assert variant_of_model(str(dev), "flux2") == "flux2-dev" and variant_of_model("flux2-klein-9b", "flux2") == "flux2-klein-9b"
    assert planned_as("flux2", str(dev)) == "flux2-dev"
    assert variant_of_model(str(_folder(tmp_path / "klein", "Flux2KleinPipeline", flux2.TRANSFORMER_KLEIN_4B)), "flux2") == ""


@pytest.mark.slow
def test_klein_full_fine_tune_writes_a_folder_and_a_bfl_file_that_load_back(tmp_path, tiny_models, kohya_dataset) -> None:
    from diffusers import Flux2KleinPipeline
    from safetensors.torch import load_file

    from core.train.model.loading import load_components
    from tests.train_helpers import make_run, train

    model = tiny_models("flux2")
    run = make_run(tmp_path / "run", model, kohya_dataset(((1, "sks dog", 2),)), "flux2", "finetune", settings={"optimizer": "adafactor"}, schedule={"max_steps": 2, "learning_rate": 1e-3})
    assert train(run) == 0
    folder = run / "output" / "diffusers"
    tuned = Flux2KleinPipeline.from_pretrained(folder).transformer.state_dict()
    base = Flux2KleinPipeline.from_pretrained(model).transformer.state_dict()
    assert any(not torch.equal(tuned[k], base[k]) for k in base)
    single = run / "output" / "tiny.safetensors"
    saved = load_file(str(single))
    assert "double_blocks.0.img_attn.qkv.weight" in saved
    stored = saved["double_blocks.0.img_attn.qkv.weight"].dtype  # save_precision
    reloaded = load_components(str(single), config_path=str(model)).denoiser.state_dict()
    assert all(torch.equal(reloaded[k].float(), tuned[k].to(stored).float()) for k in tuned)


def test_the_wizard_offers_the_flux2_and_qwen_image_models(tmp_path) -> None:
    from core.gpu import resolve
    from tui.wizard_state import WizardState

    state = WizardState(gpus=resolve("1x24GB"), base_dir=tmp_path)
    for model, family in (("flux2-klein-4b", "flux2"), ("flux2-klein-9b", "flux2"), ("flux2-dev", "flux2"), ("qwen-image", "qwenimage")):
        assert state.set_model(model) == family and state.planning_only
        assert state.methods() == ("lora", "finetune") and state.settings["resolution"] == 1024
    state.set_model("flux2-dev")
    dev = state.judge().estimate.total_bytes
    state.set_model("flux2-klein-4b")
    assert dev > 3 * state.judge().estimate.total_bytes  # the wizard sizes the variant
