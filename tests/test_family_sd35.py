"""Stable Diffusion 3.5 (family ``sd35``): its spec, detection, every file layout users have, outputs other tools load, training."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import UserError
from core.families import runtime, spec, variant
from core.families.detect import detect_family
from tests.train_helpers import make_run, metrics, status, train, weight_hashes

SD3_KEYS = ("model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight", "model.diffusion_model.context_embedder.weight", "first_stage_model.encoder.conv_in.weight")


def _fake_safetensors(path: Path, keys: tuple[str, ...]) -> Path:
    """A safetensors file whose header names ``keys`` (one float each): detection reads only the header."""
    header = {key: {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]} for i, key in enumerate(keys)}
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 4 * len(keys))
    return path


def test_variants_carry_the_real_configs():
    family = spec("sd35")
    assert [v.name for v in family.variants] == ["sd35-medium", "sd35-large", "sd35-large-turbo"]
    medium, large = family.component_configs("sd35-medium")["transformer"], family.component_configs("sd35-large")["transformer"]
    assert (medium["num_layers"], medium["num_attention_heads"] * medium["attention_head_dim"], medium["dual_attention_layers"]) == (24, 1536, list(range(13)))
    assert (large["num_layers"], large["num_attention_heads"] * large["attention_head_dim"], large["caption_projection_dim"]) == (38, 2432, 2432)
    assert medium["qk_norm"] == large["qk_norm"] == "rms_norm"
    assert [te.max_tokens for te in family.text_encoders] == [77, 77, 256]
    assert family.configs["vae"]["latent_channels"] == 16 and family.configs["vae"]["shift_factor"] == 0.0609
    assert family.bucket_step == 16 and family.objectives == ("flow",)
    assert variant("sd35-large-turbo").sample_steps == 4 and variant("sd35-large-turbo").guidance_scale == 0


@pytest.mark.parametrize("method", ["textual_inversion", "dreambooth"])
def test_methods_sd35_does_not_train_are_refused_in_one_sentence(method):
    with pytest.raises(UserError) as raised:
        spec("sd35").check_method(method)
    message = str(raised.value)
    assert "sd35" in message and "lora" in message and message.count(". ") == 0


def test_detection_from_folder_checkpoint_keys_and_hub_id(tmp_path):
    folder = tmp_path / "sd35"
    (folder / "transformer").mkdir(parents=True)
    (folder / "text_encoder_3").mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Pipeline", "transformer": ["diffusers", "SD3Transformer2DModel"]}))
    (folder / "transformer" / "config.json").write_text(json.dumps({"_class_name": "SD3Transformer2DModel", "num_layers": 38}))
    assert detect_family(str(folder)) == "sd35"
    assert detect_family(str(_fake_safetensors(tmp_path / "sd3.5_large.safetensors", SD3_KEYS))) == "sd35"
    comfy = _fake_safetensors(tmp_path / "comfy.safetensors", ("joint_blocks.0.x_block.attn.qkv.weight", "x_embedder.proj.weight"))
    assert detect_family(str(comfy)) == "sd35"
    for hub_id in ("stabilityai/stable-diffusion-3.5-large", "stabilityai/stable-diffusion-3.5-medium", "someone/sd3-finetune"):
        assert detect_family(hub_id) == "sd35"
    assert detect_family("stabilityai/stable-diffusion-xl-base-1.0") == "sdxl"
    for name in ("sd35-medium", "sd35-large", "sd35-large-turbo"):
        assert detect_family(name) == "sd35"


@pytest.mark.parametrize("name", ["sd35-medium", "sd35-large"])
def test_sai_layout_is_what_diffusers_importer_reads_at_real_size(name):
    """Real configs on the meta device: our SAI names (fused qkv, swapped modulation halves) convert back to every diffusers weight."""
    from accelerate import init_empty_weights
    from diffusers import SD3Transformer2DModel
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers, infer_diffusers_model_type

    from core.families.sd35.layout import transformer_to_original

    config = spec("sd35").component_configs(name)["transformer"]
    with init_empty_weights():
        model = SD3Transformer2DModel(**config)
    state = model.state_dict()
    original = transformer_to_original(state, config["num_layers"])
    assert infer_diffusers_model_type(original) == ("sd35_medium" if name == "sd35-medium" else "sd35_large")
    assert convert_sd3_transformer_checkpoint_to_diffusers(dict(original)).keys() == state.keys()


def test_sai_layout_round_trips_tensors_exactly():
    from diffusers import SD3Transformer2DModel
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    from core.families.sd35.layout import transformer_to_original

    torch.manual_seed(0)
    model = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=3, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=32, caption_projection_dim=16, pooled_projection_dim=32, pos_embed_max_size=16, dual_attention_layers=(0, 1), qk_norm="rms_norm",
    )  # fmt: skip
    state = model.state_dict()
    back = convert_sd3_transformer_checkpoint_to_diffusers(transformer_to_original(state, 3))
    assert back.keys() == state.keys()
    for key, tensor in state.items():
        assert torch.equal(back[key], tensor), key


# ---- the tiny SD 3.5: loading, outputs, training (functional)


def _image(pipe, prompt: str = "a red circle") -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompt, num_inference_steps=2, height=32, width=32, guidance_scale=2.0, generator=torch.Generator().manual_seed(1), output_type="np")
    return np.asarray(out.images[0])


def _fresh(path):
    from diffusers import StableDiffusion3Pipeline

    return StableDiffusion3Pipeline.from_pretrained(str(path))


def _from_single_file(path, config):
    """diffusers' SAI-file loader (it leaves T5 in training mode, dropout on: put it in eval mode as inference does)."""
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_single_file(str(path), config=str(config), local_files_only=True)
    pipe.text_encoder_3.eval()
    return pipe


def _with_lora(components, kind: str = "lora", targets: str = "all", text_encoder: bool = True):
    """The tiny model with a random (non-zero) adapter of ``kind`` on ``targets``, and on both CLIPs."""
    from peft import LoHaConfig, LoKrConfig, LoraConfig

    family = spec("sd35")
    make = {"lora": LoraConfig, "loha": LoHaConfig, "lokr": LoKrConfig}[kind]
    extra = {"lora_alpha": 2.0, "init_lora_weights": "gaussian"} if kind == "lora" else {"alpha": 2.0, "init_weights": False}
    components.denoiser.add_adapter(make(r=4, target_modules=list(family.lora_targets_of("transformer", targets)), **extra))
    if text_encoder:
        for encoder in components.text_encoders[:2]:
            encoder.add_adapter(make(r=4, target_modules=["q_proj", "k_proj", "v_proj", "out_proj", "fc1"], **extra))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in [components.denoiser, *components.text_encoders[:2]]:
            for name, param in module.named_parameters():
                if any(marker in name for marker in ("lora_", "hada_", "lokr_")):
                    param.add_(torch.randn(param.shape, generator=generator) * 0.3)
    return components


@pytest.fixture(scope="module")
def tiny(tiny_models):
    return tiny_models("sd35")


def _predict(components) -> torch.Tensor:
    family = components.runtime
    ids = family.tokenize(components.tokenizers, ["a red circle on a blue background"])
    embeddings = family.encode_text(components.text_encoders, ids, 1)
    latents = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        return family.predict(components.denoiser, latents, torch.tensor([700.0]), embeddings.prompt_embeds, family.extra_conditioning(embeddings, {}, "cpu", {}))


@pytest.mark.slow
def test_tiny_loads_from_folder_single_file_split_files_and_fp8(tmp_path, tiny):
    """The diffusers folder, the SAI single file, a transformer+VAE file with split CLIP-L/CLIP-G/T5 files, and an fp8 file give one model."""
    from safetensors.torch import load_file, save_file

    from core.train.model.loading import load_components
    from core.train.outputs.files import save_original_file

    reference = _predict(load_components(str(tiny)))
    single = save_original_file(tiny, "sd35", tmp_path / "sd35.safetensors")
    np.testing.assert_allclose(_predict(load_components(str(single), config_path=str(tiny))), reference, atol=1e-5)

    tensors = load_file(str(single))
    family = spec("sd35")
    split = {}
    for te, file in zip(family.text_encoders, ("clip_l.safetensors", "clip_g.safetensors", "t5xxl_fp16.safetensors")):
        own = {k[len(te.original_prefix) :]: v for k, v in tensors.items() if k.startswith(te.original_prefix)}
        save_file(own, str(tmp_path / file))
        split[te.name] = str(tmp_path / file)
    bare = tmp_path / "sd3.5_medium.safetensors"
    save_file({k: v for k, v in tensors.items() if not k.startswith("text_encoders.")}, str(bare))
    from core.families.protocol import ModelSource

    loaded = runtime("sd35").load(ModelSource(str(bare), text_encoders=split, config=str(tiny)))
    assert detect_family(str(bare)) == "sd35"
    components = load_components(str(single), config_path=str(tiny))
    components.denoiser, components.vae, components.text_encoders = loaded.denoiser, loaded.vae, loaded.text_encoders
    np.testing.assert_allclose(_predict(components), reference, atol=1e-5)

    fp8 = tmp_path / "sd3.5_medium_fp8.safetensors"
    save_file({k: v.to(torch.float8_e4m3fn) if k.startswith("model.") else v for k, v in tensors.items()}, str(fp8))
    upcast = load_components(str(fp8), config_path=str(tiny))
    assert next(upcast.denoiser.parameters()).dtype == torch.float32
    assert torch.allclose(_predict(upcast), reference, atol=0.2)


@pytest.mark.slow
def test_a_single_file_without_t5_names_the_part_to_give(tmp_path, tiny):
    from safetensors.torch import load_file, save_file

    from core.train.model.loading import load_components
    from core.train.outputs.files import save_original_file

    tensors = load_file(str(save_original_file(tiny, "sd35", tmp_path / "whole.safetensors")))
    config = tmp_path / "config"
    for part in ("model_index.json", "scheduler", "tokenizer", "tokenizer_2", "tokenizer_3", "transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        source = Path(tiny) / part
        target = config / part
        if source.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
        else:
            target.mkdir(parents=True)
            for file in source.iterdir():
                if file.suffix != ".safetensors":
                    (target / file.name).write_bytes(file.read_bytes())
    no_t5 = tmp_path / "no_t5.safetensors"
    save_file({k: v for k, v in tensors.items() if not k.startswith("text_encoders.t5xxl.")}, str(no_t5))
    with pytest.raises(UserError) as raised:
        load_components(str(no_t5), config_path=str(config))
    message = str(raised.value)
    assert "T5-XXL" in message and "model.t5xxl" in message and str(no_t5) in message


def _comfy_apply(sai: dict[str, torch.Tensor], kohya: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Merge a kohya LoRA into SAI weights as ComfyUI does: ``lora_unet_<module>`` is ``diffusion_model.<module>.weight``,
    delta = up @ down × alpha / rank; CLIP modules as sd-scripts names them."""
    names = {"lora_unet_" + k[len("model.diffusion_model.") : -len(".weight")].replace(".", "_"): k for k in sai if k.startswith("model.diffusion_model.") and k.endswith(".weight")}
    for te, prefix in (("lora_te1_", "text_encoders.clip_l.transformer."), ("lora_te2_", "text_encoders.clip_g.transformer.")):
        names.update({te + k[len(prefix) : -len(".weight")].replace(".", "_"): k for k in sai if k.startswith(prefix) and k.endswith(".weight")})
    merged = dict(sai)
    bases = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in kohya}
    for base in bases:
        assert base in names, f"{base} is no module ComfyUI or sd-scripts knows"
        down, up = kohya[base + ".lora_down.weight"].float(), kohya[base + ".lora_up.weight"].float()
        target = names[base]
        delta = (up @ down) * (float(kohya[base + ".alpha"]) / down.shape[0])
        assert delta.shape == merged[target].shape, base
        merged[target] = merged[target] + delta
    return merged


@pytest.mark.slow
def test_lora_both_formats_reproduce_the_trained_model(tmp_path, tiny):
    """The diffusers file loads with StableDiffusion3Pipeline.load_lora_weights; the kohya file (fused qkv) merged
    into the SAI file as ComfyUI does loads with from_single_file; both give the trained model's image."""
    from safetensors.torch import load_file, save_file

    from core.train.model.loading import load_components
    from core.train.outputs.files import save_lora, save_original_file

    components = _with_lora(load_components(str(tiny)))
    trained = _image(components.pipeline())
    files = save_lora(components, tmp_path / "output", "mine", metadata={"ss_output_name": "mine"})
    assert np.abs(_image(_fresh(tiny)) - trained).max() > 0.01  # the LoRA changes the image
    pipe = _fresh(tiny)
    pipe.load_lora_weights(str(files.diffusers.parent))
    np.testing.assert_allclose(_image(pipe), trained, atol=1e-5)

    kohya = load_file(str(files.single_file))
    assert kohya["lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight"].shape[0] == 12  # q, k and v stacked: rank 3 × 4
    sai = load_file(str(save_original_file(tiny, "sd35", tmp_path / "base.safetensors")))
    merged = tmp_path / "merged.safetensors"
    save_file(_comfy_apply(sai, kohya), str(merged))
    comfy = _from_single_file(merged, tiny)
    np.testing.assert_allclose(_image(comfy), trained, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["lora", "loha", "lokr"])
def test_kohya_file_reads_back_into_the_adapters_exactly(tiny, kind):
    """settings.init_lora: the kohya file (fused for LoRA, diffusers-named for LoHa/LoKr) gives back peft's tensors."""
    from core.families.protocol import AdapterWeights
    from core.train.model.loading import load_components
    from core.train.outputs.files import adapter_state

    components = _with_lora(load_components(str(tiny)), kind=kind, text_encoder=False)
    family = components.runtime
    config = dict(components.denoiser.config)
    state, peft_config = adapter_state(components.denoiser)
    adapter = AdapterWeights("transformer", state, peft_config)
    files = family.lora_files([adapter], config)
    prefixes = ("lora_unet_joint_blocks_",) if kind == "lora" else ("lora_transformer_transformer_blocks_",)
    assert all(k.startswith(prefixes) for k in files.kohya)
    back = family.lora_from_file(files.kohya, adapter, config)
    assert back.keys() == state.keys()
    for key, tensor in state.items():
        if kind == "lora":  # the fused up is block-diagonal: each part's own block, exactly
            assert torch.allclose(back[key].float(), tensor.float(), atol=1e-6), key


@pytest.mark.slow
def test_sd_scripts_fused_lora_of_its_own_rank_loads(tiny):
    """A LoRA as sd-scripts trains it (one rank-r down shared by q, k and v) reads into the separate q/k/v adapters."""
    from core.families.protocol import AdapterWeights
    from core.train.model.loading import load_components
    from core.train.outputs.files import adapter_state

    components = _with_lora(load_components(str(tiny)), targets="attn", text_encoder=False)
    config = dict(components.denoiser.config)
    adapter = AdapterWeights("transformer", *adapter_state(components.denoiser))
    base = "lora_unet_joint_blocks_0_x_block_attn_qkv"
    width = config["num_attention_heads"] * config["attention_head_dim"]
    down, up = torch.randn(4, width), torch.randn(3 * width, 4)
    back = runtime("sd35").lora_from_file({f"{base}.lora_down.weight": down, f"{base}.lora_up.weight": up, f"{base}.alpha": torch.tensor(4.0)}, adapter, config)
    scale = 2.0 / 4  # the adapter's alpha / rank; the file's is 1
    for index, name in enumerate(("to_q", "to_k", "to_v")):
        a, b = back[f"transformer_blocks.0.attn.{name}.lora_A.weight"], back[f"transformer_blocks.0.attn.{name}.lora_B.weight"]
        assert torch.allclose(b @ a * scale, up.chunk(3)[index] @ down, atol=1e-5)


@pytest.mark.slow
def test_full_model_diffusers_folder_and_sai_single_file(tmp_path, tiny):
    from core.train.model.loading import load_components
    from core.train.outputs.files import save_full_model

    components = load_components(str(tiny))
    with torch.no_grad():
        for param in components.denoiser.parameters():
            param.mul_(1.01)
    trained = _image(components.pipeline())
    files = save_full_model(components, tmp_path / "output", "full")
    np.testing.assert_allclose(_image(_fresh(files.diffusers)), trained, atol=1e-5)
    np.testing.assert_allclose(_image(_from_single_file(files.single_file, tiny)), trained, atol=1e-5)
    np.testing.assert_allclose(_image(load_components(str(files.single_file), config_path=str(tiny)).pipeline()), trained, atol=1e-5)


SCHEDULE = {"epochs": 2, "save_every_epochs": 0, "lr_scheduler": "cosine", "lr_warmup_steps": 1, "sample_every_steps": 3}


@pytest.mark.slow
@pytest.mark.parametrize(("method", "settings"), [("lora", {"lora_targets": "all", "train_text_encoder": True}), ("finetune", {})])
def test_training_runs_writes_samples_and_outputs(tmp_path, tiny, kohya_dataset, method, settings):
    data = kohya_dataset(((1, "sks dog", 3),))
    run = make_run(tmp_path / "run", tiny, data, "sd35", method, settings={**settings, "bucket_reso_steps": 64}, schedule=SCHEDULE, prompts=["a photo of sks dog --w 64 --h 64 --s 2"])
    assert train(run) == 0
    assert status(run)["state"] == "finished"
    losses = [m["loss"] for m in metrics(run, "step")]
    assert len(losses) == 6 and all(np.isfinite(losses))
    assert sorted(p.name for p in (run / "samples").glob("*.png")) == ["step000003_p00.png", "step000006_p00.png"]
    assert (run / "output" / "tiny.safetensors").is_file()


@pytest.mark.slow
def test_a_stopped_run_resumes_with_the_same_losses(tmp_path, tiny, kohya_dataset):
    from tests.test_train_resume import stop_after

    data = kohya_dataset(((1, "sks dog", 3),))
    schedule = {**SCHEDULE, "sample_every_steps": 0}
    whole = make_run(tmp_path / "whole", tiny, data, "sd35", "lora", settings={"bucket_reso_steps": 64}, schedule=schedule)
    assert train(whole) == 0
    reference = {m["step"]: m["loss"] for m in metrics(whole, "step")}
    run = make_run(tmp_path / "run", tiny, data, "sd35", "lora", settings={"bucket_reso_steps": 64}, schedule=schedule)
    watcher = stop_after(run, 2)
    assert train(run) == 0
    watcher.join()
    assert status(run)["state"] == "stopped"
    assert train(run) == 0
    assert status(run)["state"] == "finished"
    assert [m["step"] for m in metrics(run, "step")] == list(range(1, 7))
    for line in metrics(run, "step"):
        assert line["loss"] == pytest.approx(reference[line["step"]], rel=1e-4)


@pytest.mark.slow
@pytest.mark.xdist_group("ddp")
def test_two_processes_train_sd35_to_identical_weights(tmp_path, tiny, kohya_dataset):
    """Real 2-process DDP (gloo) under accelerate launch: both ranks end with the same LoRA and CLIP-L/G adapter weights."""
    from tests.train_helpers import launch

    data = kohya_dataset(((1, "sks dog", 4),))
    run = make_run(tmp_path / "run", tiny, data, "sd35", "lora", settings={"train_text_encoder": True, "lora_targets": "all"}, schedule={"epochs": 1}, processes=2)
    hashes = tmp_path / "hashes.txt"
    done = launch(run, 2, args=["--weights-hash", str(hashes)])
    assert done.returncode == 0, done.stderr[-3000:]
    final = status(run)
    assert (final["state"], final["step"]) == ("finished", 2)
    last = weight_hashes(hashes, 2)
    assert sorted(rank for rank, _ in last) == ["0", "1"] and len({digest for _, digest in last}) == 1


def test_plan_without_weights(capsys):
    """``sdtui plan --model sd35-medium`` plans from the spec and the measured tables: a LoRA recipe that fits 24 GB, rates from the family."""
    from cli.main import main

    assert main(["--gpus", "1x24GB", "plan", "--model", "sd35-medium", "--method", "lora", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["model_family"] == "sd35" and plan["recipe"].startswith("sd35-lora") and plan["fits"] is True
    assert main(["--gpus", "1x24GB", "plan", "--model", "sd35-large", "--method", "textual_inversion"]) == 2
    assert capsys.readouterr().err.strip() == "sdtui: the sd35 family does not train with textual_inversion; use one of lora, finetune"


def test_a_run_config_with_a_method_sd35_does_not_train_is_refused(tmp_path, kohya_dataset, capsys):
    from cli.main import main

    run = make_run(tmp_path / "run", "sd35", kohya_dataset(((1, "sks dog", 1),)), "sd35", "dreambooth")
    assert main(["plan", str(run / "run.toml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("the sd35 family does not train with dreambooth; set [method] kind to one of lora, finetune") and err.count("\n") == 0


def test_large_is_planned_with_its_own_tables(capsys):
    """``--model sd35-large`` (and Turbo) plan with Large's measured transformer: more memory, fewer
    images/s; Medium's 12 GB recipe does not fit Large on 16 GB, Large's own 16 GB recipe (fp8 base) does."""
    from cli.main import main

    def plan(model: str, gpus: str = "1x24GB", recipe: str = "sd35-lora-12gb") -> dict:
        assert main(["--gpus", gpus, "plan", "--model", model, "--method", "lora", "--recipe", recipe, "--json"]) == 0
        return json.loads(capsys.readouterr().out)

    medium, large, turbo = plan("sd35-medium"), plan("sd35-large"), plan("sd35-large-turbo")
    assert large["vram_estimate_gb"] > medium["vram_estimate_gb"] + 8 and turbo["vram_estimate_gb"] == large["vram_estimate_gb"]
    assert plan("sd35-medium", "1x12GB")["fits"] is True and plan("sd35-large", "1x16GB")["fits"] is False
    fp8 = plan("sd35-large", "1x16GB", "sd35-large-lora-16gb")
    assert fp8["fits"] is True and fp8["vram_estimate_gb"] < large["vram_estimate_gb"] - 4
    assert spec("sd35-large").name == "sd35" and spec("sd35-large").denoiser_tflops > 2 * spec("sd35").denoiser_tflops


@pytest.mark.slow
def test_the_gpu_benchmark_runs_its_sd35_case_in_tiny_mode(tmp_path):
    """``python -m bench.bench_gpu --family sd35`` on the CPU at toy size: ours against the SD3 LoRA example's loop, one line per case."""
    from bench.bench_gpu import main as bench_main

    lines = bench_main(["--tiny", "--family", "sd35", "--method", "lora", "--batch", "1", "--workdir", str(tmp_path / "work")])
    assert [line.split(":")[0] for line in lines] == ["gpu_sd35_lora_64px_b1_tiny_cpu (checks the script; not a GPU figure)"]
    assert "ours failed" not in lines[0] and "reference failed" not in lines[0] and "ratio=n/a" not in lines[0], lines[0]


@pytest.mark.slow
def test_the_demo_runs_the_whole_flow_on_the_tiny_sd35(tmp_path, tiny, tiny_captioners):
    """``sdtui demo --family sd35 --headless``: the tiny SD 3.5, the generated dataset, training to the end with samples."""
    import shutil

    from core.demo import run_headless, workspace

    ws = workspace(tmp_path / "demo", "sd35")
    shutil.copytree(tiny, ws.model)
    shutil.copytree(tiny_captioners["florence2"], ws.captioner)
    lines: list[str] = []
    overrides = ["schedule.max_steps=4", "schedule.sample_every_steps=4", "schedule.sample_at_start=false"]
    assert run_headless(tmp_path / "demo", overrides=overrides, out=lines.append, family="sd35") == 0, lines
    assert ws.model.name == "model-sd35" and any("finished" in line for line in lines)
    assert any(line.startswith("sample at step 4:") for line in lines), lines
