"""The family runtime Protocol and the SD-UNet families' hooks, each checked bit-identical to today's trainer code."""

from __future__ import annotations

import copy
import fnmatch
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from core.errors import UserError
from core.families import FAMILIES, runtime, spec
from core.families.embeddings import TextEmbeddings
from core.families.protocol import AdapterWeights, FamilyRuntime, ModelSource
from core.train.model.loading import load_components


def _lora(components, text_encoder: bool = True, kind: str = "lora"):
    from peft import LoHaConfig, LoraConfig

    make = LoraConfig if kind == "lora" else LoHaConfig
    extra = {"lora_alpha": 2.0, "init_lora_weights": "gaussian"} if kind == "lora" else {"alpha": 2.0, "init_weights": False}
    components.denoiser.add_adapter(make(r=4, target_modules=["to_q", "to_k", "to_v", "to_out.0", "conv1"], **extra))
    if text_encoder:
        for encoder in components.text_encoders:
            encoder.add_adapter(make(r=4, target_modules=["q_proj", "v_proj"], **extra))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in [components.denoiser, *components.text_encoders]:
            for name, param in module.named_parameters():
                if "lora_" in name or "hada_" in name:
                    param.add_(torch.randn(param.shape, generator=generator) * 0.3)
    return components


def _adapters(components) -> list[AdapterWeights]:
    from core.train.outputs.files import adapter_state

    modules = {spec(components.family).denoiser: components.denoiser, **dict(zip(components.text_encoder_names, components.text_encoders))}
    return [AdapterWeights(name, *adapter_state(m)) for name, m in modules.items() if adapter_state(m)[1] is not None]


@pytest.mark.parametrize("name", FAMILIES)
def test_every_runtime_implements_the_protocol(name: str) -> None:
    assert isinstance(runtime(name), FamilyRuntime)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_encode_latents_is_the_trainers_scaling(tiny_models, family: str) -> None:
    from core.train.step import Stepper

    components = load_components(str(tiny_models(family)))
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    session = SimpleNamespace(device=torch.device("cpu"), components=components)
    ours = runtime(family).encode_latents(components.vae, pixels, torch.Generator().manual_seed(3))
    theirs = Stepper(session, None).latents({"pixel_values": pixels}, torch.Generator().manual_seed(3))
    assert torch.equal(ours, theirs) and ours.dtype == torch.float32
    mode = runtime(family).encode_latents(components.vae, pixels)
    with torch.no_grad():
        expected = components.vae.encode(pixels).latent_dist.mode() * float(components.vae.config.scaling_factor)
    assert torch.equal(mode, expected)


def test_latent_normalisation_per_channel_round_trips(tiny_models) -> None:
    components = load_components(str(tiny_models("sd1")))
    vae = components.vae
    vae.register_to_config(latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[2.0, 1.0, 0.5, 1.5])
    family = runtime("sd1")
    latents = family.encode_latents(vae, torch.rand(1, 3, 32, 32) * 2 - 1)
    with torch.no_grad():
        raw = vae.encode(torch.rand(1, 3, 32, 32)).latent_dist.mode()
    assert latents.shape == raw.shape
    decoded = family.decode_latents(vae, latents)
    assert decoded.shape == (1, 3, 32, 32)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_tokenize_uses_the_specs_max_tokens_and_matches_the_trainer(tiny_models, family: str) -> None:
    from core.train.model.text import tokenize

    components = load_components(str(tiny_models(family)))
    captions = ["a photo of sks dog", "toy " * 200]
    ours = runtime(family).tokenize(components.tokenizers, captions)
    assert all(torch.equal(a, b) for a, b in zip(ours, tokenize(components, captions)))
    assert [t.shape[1] for t in ours] == [te.max_tokens for te in spec(family).text_encoders]


def test_text_embeddings_are_named_tensors_a_cache_can_store() -> None:
    emb = TextEmbeddings(torch.zeros(1, 5, 8), torch.ones(1, 8), {"attention_mask": torch.ones(1, 5, dtype=torch.long)})
    named = emb.named()
    assert set(named) == {"hidden_states", "pooled", "attention_mask"}
    back = TextEmbeddings.from_named(named).to(dtype=torch.bfloat16)
    assert back.prompt_embeds.dtype == torch.bfloat16 and back.extra["attention_mask"].dtype == torch.long
    with pytest.raises(ValueError, match="hidden_states"):
        TextEmbeddings.from_named({"pooled": torch.ones(1)})


@pytest.mark.parametrize(("family", "kind"), [("sd1", "lora"), ("sdxl", "lora"), ("sd1", "loha")])
def test_lora_files_are_the_trainers_kohya_and_diffusers_files(tmp_path: Path, tiny_models, family: str, kind: str) -> None:
    from safetensors.torch import load_file

    from core.train.outputs.files import save_lora

    components = _lora(load_components(str(tiny_models(family))), kind=kind)
    files = runtime(family).lora_files(_adapters(components), dict(components.denoiser.config))
    saved_files = save_lora(components, tmp_path, "x")
    theirs = load_file(str(saved_files.single_file))
    assert files.kohya.keys() == theirs.keys() and all(torch.equal(files.kohya[k], theirs[k]) for k in theirs)
    if kind == "lora":
        from safetensors import safe_open

        path = str(saved_files.diffusers)
        saved = load_file(path)
        assert files.diffusers.keys() == saved.keys() and all(torch.equal(files.diffusers[k], saved[k]) for k in saved)
        with safe_open(path, framework="pt") as handle:
            assert files.diffusers_metadata == handle.metadata()


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_lora_from_file_reads_back_the_kohya_and_diffusers_files_it_writes(tiny_models, family: str) -> None:
    components = _lora(load_components(str(tiny_models(family))))
    config = dict(components.denoiser.config)
    files = runtime(family).lora_files(_adapters(components), config)
    for tensors in (files.kohya, files.diffusers):
        for adapter in _adapters(components):
            ours = runtime(family).lora_from_file(tensors, adapter, config)
            assert ours.keys() == adapter.state.keys()
            assert all(torch.equal(ours[k], adapter.state[k]) for k in ours)


@pytest.mark.parametrize(
    ("family", "v", "version", "architecture", "v2"),
    [
        ("sd1", False, "sd_v1", "stable-diffusion-v1/lora", "False"),
        ("sd2", True, "sd_v2_v", "stable-diffusion-v2-768-v/lora", "True"),
        ("sdxl", False, "sdxl_base_v1-0", "stable-diffusion-xl-v1-base/lora", "False"),
    ],
)
def test_kohya_metadata_values_are_what_sd_scripts_writes(family: str, v: bool, version: str, architecture: str, v2: str) -> None:
    values = runtime(family).kohya_metadata(v)
    assert values["ss_base_model_version"] == version and values["ss_v2"] == v2
    assert values["modelspec.architecture"] == architecture and values["modelspec.prediction_type"] == ("v" if v else "epsilon")
    assert values["modelspec.implementation"] == spec(family).modelspec_implementation


def test_a_flow_setting_the_family_cannot_honour_is_refused_in_one_sentence() -> None:
    from dataclasses import replace

    from core.families.objectives import check_objective_settings

    flow = replace(spec("sd1"), name="flowy", objective="flow", objectives=("flow",))
    with pytest.raises(UserError, match=r"set settings.min_snr_gamma = 0"):
        check_objective_settings(flow, "flow", {"min_snr_gamma": 5})
    with pytest.raises(UserError, match="trains with flow, not v_prediction"):
        check_objective_settings(flow, "v_prediction", {})
    check_objective_settings(flow, "flow", {"min_snr_gamma": 0})
    runtime("sd1").objective("epsilon", None, {"min_snr_gamma": 5})


def test_sample_defaults_are_the_variants_and_the_prompt_syntax_defaults() -> None:
    from dataclasses import replace

    from core.families.spec import Variant
    from core.sample_prompts import parse_prompt_line

    plain = parse_prompt_line("a dog")
    assert runtime("sd1").sample_defaults() == (plain.steps, plain.scale) == runtime("sdxl").sample_defaults("sdxl")
    distilled = copy.copy(runtime("sd1"))
    distilled.spec = replace(spec("sd1"), variants=(*spec("sd1").variants, Variant("sd1-turbo", "sd1", "turbo", sample_steps=4, guidance_scale=0.0)))
    steps, scale = distilled.sample_defaults("sd1-turbo")
    assert (steps, scale) == (4, 0.0)
    assert parse_prompt_line("a dog", steps=steps, scale=scale).steps == 4


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_sample_arguments_are_the_trainers_call(tiny_models, family: str) -> None:
    from dataclasses import replace

    from core.sample_prompts import parse_prompt_line

    components = load_components(str(tiny_models(family)))
    pipe = components.pipeline()
    prompt = parse_prompt_line("a dog --n cat --w 64 --h 72 --s 3 --l 5")
    call = runtime(family).sample_arguments(pipe, prompt, 1)
    assert call == {"prompt": "a dog", "negative_prompt": "cat", "width": 64, "height": 72, "num_inference_steps": 3, "guidance_scale": 5.0, "clip_skip": None}
    skipped = runtime(family).sample_arguments(pipe, prompt, 3)
    if family == "sd1":  # the skipped layer's states computed by the family (transformers 5's CLIP has no text_model for diffusers' clip_skip)
        assert "prompt" not in skipped and skipped["prompt_embeds"].shape[0] == 1 and skipped["clip_skip"] is None
    else:  # SDXL's pipeline counts clip_skip from its own native layer
        assert skipped["prompt"] == "a dog" and skipped["clip_skip"] == 3 - spec(family).native_clip_layer
    no_skip = copy.copy(runtime(family))
    no_skip.spec = replace(spec(family), pipeline_clip_skip=False)
    assert "clip_skip" not in no_skip.sample_arguments(pipe, prompt, 1)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_build_tiny_writes_the_trainers_tiny_model(tmp_path: Path, tiny_models, family: str) -> None:
    ours = runtime(family).build_tiny(tmp_path / "ours")
    theirs = tiny_models(family)
    files = sorted(p.relative_to(theirs) for p in theirs.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(ours) for p in ours.rglob("*") if p.is_file())
    assert all((ours / f).read_bytes() == (theirs / f).read_bytes() for f in files)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
@pytest.mark.slow
def test_load_whole_and_split_files(tmp_path: Path, tiny_models, family: str) -> None:
    from core.train.model.tiny import build_tiny_single_file

    folder = tiny_models(family)
    whole = runtime(family).load(ModelSource(str(folder)))
    reference = load_components(str(folder))
    assert torch.equal(next(whole.denoiser.parameters()), next(reference.denoiser.parameters()))
    single = build_tiny_single_file(family, tmp_path / "model.safetensors")
    from_file = runtime(family).load(ModelSource(str(single)))
    assert type(from_file.denoiser).__name__ == "UNet2DConditionModel" and len(from_file.tokenizers) == len(spec(family).tokenizer_names)
    # split files: the denoiser from its own file (diffusers layout) over the base folder
    denoiser_file = folder / "unet" / "diffusion_pytorch_model.safetensors"
    split = runtime(family).load(ModelSource(str(folder), denoiser=str(denoiser_file), vae=str(folder / "vae")))
    assert all(torch.equal(a, b) for a, b in zip(split.denoiser.parameters(), reference.denoiser.parameters()))
    # the denoiser from a file in the original layout, a text encoder from a file in transformers' names
    from safetensors.torch import save_file

    encoder_file = tmp_path / "te.safetensors"
    save_file({k: v.contiguous() for k, v in reference.text_encoders[0].state_dict().items()}, str(encoder_file))
    original = runtime(family).load(ModelSource(str(folder), denoiser=str(single), text_encoders={spec(family).text_encoder_names[0]: str(encoder_file)}))
    assert all(torch.equal(a, b) for a, b in zip(original.denoiser.parameters(), reference.denoiser.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(original.text_encoders[0].parameters(), reference.text_encoders[0].parameters()))
    with pytest.raises(UserError, match="has no text encoder 'text_encoder_3'"):
        runtime(family).load(ModelSource(str(folder), text_encoders={"text_encoder_3": str(encoder_file)}))


@pytest.mark.parametrize("family", FAMILIES)
def test_the_specs_swap_blocks_and_high_precision_patterns_name_real_modules(tiny_models, family: str) -> None:
    """Each block list is a ModuleList of the denoiser as long as its config key counts; each
    high-precision pattern matches some module of its component (a typo would keep nothing)."""
    found = spec(family)
    model = load_components(str(tiny_models(family)))
    config = dict(model.denoiser.config)
    for path, key in found.swap_blocks.items():
        blocks = model.denoiser.get_submodule(path)
        assert isinstance(blocks, torch.nn.ModuleList)
        assert len(blocks) == (len(config[key]) if isinstance(config[key], (list, tuple)) else config[key])
    components = {found.denoiser: model.denoiser, **dict(zip(found.text_encoder_names, model.text_encoders))}
    for component, patterns in found.high_precision.items():
        names = [name for name, _ in components[component].named_modules()]
        for pattern in patterns:
            assert any(found.keeps_precision(component, name) and fnmatch.fnmatchcase(name, pattern) for name in names), (component, pattern)


@pytest.mark.parametrize(("family", "count"), [("sd1", 8), ("sd2", 8), ("sdxl", 6)])
def test_a_unet_swaps_its_down_and_up_blocks_and_keeps_norms_and_embeddings(tiny_models, family: str, count: int) -> None:
    found = spec(family)
    assert list(found.swap_blocks) == ["down_blocks", "up_blocks"] and found.swap_block_count() == count
    model = load_components(str(tiny_models(family)))
    kept = {name for name, _ in model.denoiser.named_modules() if found.keeps_precision("unet", name)}
    assert {"time_embedding.linear_1", "conv_norm_out", "conv_in"} <= kept
    assert not any(name.endswith(("to_q", "to_k", "ff.net.2", "proj_in")) for name in kept)
    for name, encoder in zip(found.text_encoder_names, model.text_encoders):
        names = [n for n, _ in encoder.named_modules()]
        assert any(found.keeps_precision(name, n) for n in names if n.endswith("token_embedding"))
        assert not any(found.keeps_precision(name, n) for n in names if n.endswith(("q_proj", "fc1")))


@pytest.mark.parametrize(
    ("family", "variant", "count", "kept", "quantized"),
    [
        ("sd35", "sd35-large", 38, ("transformer_blocks.0.norm1.linear", "context_embedder", "proj_out"), ("transformer_blocks.0.attn.to_q", "transformer_blocks.0.ff.net.2")),
        ("zimage", "z-image", 30, ("layers.0.adaLN_modulation.0", "t_embedder.mlp.0", "all_final_layer.2-1.linear"), ("layers.0.attention.to_q", "noise_refiner.0.feed_forward.w2")),
        (
            "flux2",
            "flux2-dev",
            56,
            ("double_stream_modulation_img.linear", "x_embedder", "norm_out.linear"),
            ("single_transformer_blocks.0.attn.to_qkv_mlp_proj", "transformer_blocks.0.ff.linear_in"),
        ),
        ("flux2", "flux2-klein-9b", 32, ("single_stream_modulation.linear",), ("transformer_blocks.0.attn.to_add_out",)),
        (
            "qwenimage",
            "qwen-image",
            60,
            ("img_in", "txt_in", "time_text_embed.timestep_embedder.linear_1", "proj_out"),
            ("transformer_blocks.0.img_mod.1", "transformer_blocks.0.txt_mlp.net.2"),
        ),
    ],
)
def test_a_transformer_swaps_its_blocks_and_keeps_embedders_modulation_and_norms(tiny_models, family, variant, count, kept, quantized) -> None:
    """The real-size block count a swap may name; the tiny model's linears the spec keeps and those it quantizes."""
    found = spec(family)
    assert found.swap_block_count(variant) == count
    model = load_components(str(tiny_models(family)))
    linears = {name for name, module in model.denoiser.named_modules() if isinstance(module, torch.nn.Linear)}
    assert set(kept) <= linears and set(quantized) <= linears
    assert all(found.keeps_precision(found.denoiser, name) for name in kept)
    assert not any(found.keeps_precision(found.denoiser, name) for name in quantized)
    for name, encoder in zip(found.text_encoder_names, model.text_encoders):
        names = [n for n, _ in encoder.named_modules()]
        assert all(found.keeps_precision(name, n) for n in names if n.endswith(("layer_norm", "layernorm")))
        assert not any(found.keeps_precision(name, n) for n in names if n.endswith(("q_proj", "fc1", "SelfAttention.q")))


def test_dummy_inputs_run_the_denoiser(tiny_models) -> None:
    for family in ("sd1", "sdxl"):
        unet = load_components(str(tiny_models(family))).denoiser
        inputs = runtime(family).dummy_inputs(dict(unet.config), 1, 64, torch.float32, torch.device("cpu"))
        with torch.no_grad():
            assert unet(**inputs).sample.shape == inputs["sample"].shape


def test_the_trainer_calls_only_hooks_the_protocol_lists() -> None:
    import re

    root = Path(__file__).resolve().parent.parent / "core" / "train"
    called = {m for path in root.rglob("*.py") for m in re.findall(r"\bruntime(?:\(\w+\))?\.([a-z_]+)", path.read_text(encoding="utf-8"))}
    listed = {n for n in dir(FamilyRuntime) if not n.startswith("_")} | set(FamilyRuntime.__annotations__)
    assert called and called <= listed, sorted(called - listed)
    assert "pipe.unet" not in "".join(p.read_text(encoding="utf-8") for p in root.rglob("*.py"))
