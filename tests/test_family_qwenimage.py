"""Qwen-Image: the pipeline's text states, the one-frame VAE, loading (folder, ComfyUI transformer file, fp8, split),
LoRA training through the trainer, resume, samples, and both LoRA files reproducing the trained model in diffusers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import UserError
from core.families import runtime
from core.families.detect import detect_family, family_of_file, family_of_folder
from core.families.protocol import ModelSource
from core.train.model.loading import load_components
from tests.test_train_resume import stop_after
from tests.train_helpers import make_run, metrics, status, train, weight_hashes

CAPTIONS = ["a photo of sks dog", "a cat"]


def test_text_states_are_the_pipelines_own(tiny_models) -> None:
    components = load_components(str(tiny_models("qwenimage")))
    family = components.runtime
    ids = family.tokenize(components.tokenizers, CAPTIONS, components.variant)
    ours = family.encode_text(components.text_encoders, ids, 1)
    states, mask = components.pipeline().encode_prompt(CAPTIONS, device="cpu")
    assert torch.allclose(ours.prompt_embeds, states, atol=1e-6)
    assert torch.equal(ours.extra["attention_mask"].long(), mask.long())  # the shorter caption is masked at its end
    assert not bool(mask[1].all())


def test_latents_are_one_frame_normalised_per_channel_and_decode_back(tiny_models) -> None:
    components = load_components(str(tiny_models("qwenimage")))
    vae, family = components.vae, components.runtime
    pixels = torch.rand(1, 3, 64, 64) * 2 - 1
    latents = family.encode_latents(vae, pixels)
    assert latents.shape == (1, 16, 8, 8) and latents.dtype == torch.float32
    with torch.no_grad():
        raw = vae.encode(pixels[:, :, None]).latent_dist.mode()[:, :, 0]
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1)
    assert torch.allclose(latents, (raw - mean) / std, atol=1e-6)
    with torch.no_grad():
        expected = vae.decode((latents * std + mean)[:, :, None]).sample[:, :, 0]
    assert torch.allclose(family.decode_latents(vae, latents), expected, atol=1e-6)


def test_the_objective_is_the_models_dynamic_shift(tiny_models) -> None:
    components = load_components(str(tiny_models("qwenimage")))
    objective = components.objective
    assert objective.token_shift == (0.5, 0.9, 256, 8192, 2)  # musubi-tuner's qwen_shift
    assert objective.shift_for((128, 128)) == pytest.approx(np.exp(0.5 + 0.4 * (4096 - 256) / (8192 - 256)))


def _edit_folder(root: Path) -> Path:
    root.mkdir()
    (root / "model_index.json").write_text(json.dumps({"_class_name": "QwenImageEditPlusPipeline", "transformer": ["diffusers", "QwenImageTransformer2DModel"]}))
    return root


def test_qwen_image_is_detected_and_an_edit_model_refused_in_one_sentence(tmp_path, tiny_models) -> None:
    assert family_of_folder(tiny_models("qwenimage")) == "qwenimage"
    assert detect_family("Qwen/Qwen-Image") == detect_family("qwen-image") == "qwenimage"
    for model in (str(_edit_folder(tmp_path / "edit")), "Qwen/Qwen-Image-Edit-2511"):
        with pytest.raises(UserError, match="Qwen-Image-Edit") as caught:
            detect_family(model)
        assert "later" not in str(caught.value) and str(caught.value).count(".") <= 2


@pytest.mark.slow
def test_comfyui_transformer_files_load_bf16_and_fp8(tmp_path, tiny_models) -> None:
    from safetensors.torch import load_file, save_file

    from core.train.model.tiny import build_tiny_single_file

    folder = tiny_models("qwenimage")
    reference = load_components(str(folder)).denoiser.state_dict()
    single = build_tiny_single_file("qwenimage", tmp_path / "qwen_image.safetensors")
    assert family_of_file(single) == "qwenimage"
    loaded = load_components(str(single)).denoiser.state_dict()
    assert all(torch.equal(loaded[k], reference[k]) for k in reference)
    fp8 = tmp_path / "qwen_image_fp8_e4m3fn.safetensors"
    save_file({f"model.diffusion_model.{k}": v.to(torch.float8_e4m3fn) for k, v in load_file(str(single)).items()}, str(fp8))
    split = runtime("qwenimage").load(ModelSource(str(folder), denoiser=str(fp8)))
    for key, tensor in split.denoiser.state_dict().items():
        assert tensor.dtype == torch.float32 and torch.equal(tensor, reference[key].to(torch.float8_e4m3fn).float()), key


def _image(pipe) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    out = pipe("a photo of sks dog", num_inference_steps=2, height=64, width=64, generator=torch.Generator().manual_seed(1), output_type="np")
    return np.asarray(out.images[0])


@pytest.mark.slow
def test_a_lora_run_trains_samples_and_both_files_reproduce_it_in_diffusers(tmp_path, tiny_models, kohya_dataset) -> None:
    from diffusers import QwenImagePipeline
    from safetensors import safe_open

    model = tiny_models("qwenimage")
    data = kohya_dataset(((2, "sks dog", 2),))
    settings = {"lora_targets": "attn_ff", "lora_alpha": 2, "train_double_block_indices": "1"}
    run = make_run(
        tmp_path / "run",
        model,
        data,
        "qwenimage",
        "lora",
        settings=settings,
        schedule={"max_steps": 3, "sample_every_steps": 3, "learning_rate": 3e-2},
        prompts=["a photo of sks dog --w 64 --h 64 --s 2"],
    )
    assert train(run) == 0
    assert [m["step"] for m in metrics(run, "step")] == [1, 2, 3]
    assert (run / metrics(run, "sample")[0]["path"]).is_file()
    comfy = run / "output" / "tiny.safetensors"
    with safe_open(str(comfy), "pt") as handle:
        keys, meta = list(handle.keys()), handle.metadata()
    assert keys and all(k.startswith("diffusion_model.transformer_blocks.1.") for k in keys)  # block 0 not selected
    assert any(k.endswith(".img_mlp.net.0.proj.lora_down.weight") for k in keys)
    assert meta["modelspec.architecture"] == "qwen-image/lora" and meta["ss_base_model_version"] == "qwen_image"

    trained = load_components(str(model))
    _load_lora(trained, run / "output" / "tiny.safetensors", settings)
    reference = _image(trained.pipeline())
    assert np.abs(reference - _image(QwenImagePipeline.from_pretrained(model))).max() > 1e-3  # the LoRA changes the image
    for source in (run / "output" / "diffusers", comfy):
        pipe = QwenImagePipeline.from_pretrained(model)
        pipe.load_lora_weights(str(source))
        np.testing.assert_allclose(_image(pipe), reference, atol=1e-5)


def _load_lora(components, file: Path, settings: dict) -> None:
    """The file's LoRA into the tiny transformer through the family's own reader (what ``init_lora`` does)."""
    from peft import LoraConfig
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    from core.families.protocol import AdapterWeights
    from core.train.outputs.files import adapter_state

    denoiser, family = components.denoiser, components.runtime
    targets = family.lora_target_modules(denoiser, components.spec.lora_targets_of("transformer", settings["lora_targets"]), settings)
    config = LoraConfig(r=4, lora_alpha=settings["lora_alpha"], target_modules=targets)
    denoiser.add_adapter(config)
    state, _ = adapter_state(denoiser)
    tensors = family.lora_from_file(load_file(str(file)), AdapterWeights("transformer", state, config), dict(denoiser.config))
    assert set(tensors) == set(state)
    set_peft_model_state_dict(denoiser, tensors)


@pytest.mark.slow
def test_a_stopped_qwen_image_run_resumes_with_the_same_losses(tmp_path, tiny_models, kohya_dataset) -> None:
    data = kohya_dataset(((1, "sks dog", 3),))
    model = tiny_models("qwenimage")
    schedule = {"epochs": 2, "save_every_epochs": 0, "lr_scheduler": "cosine", "lr_warmup_steps": 1}
    whole = make_run(tmp_path / "whole", model, data, "qwenimage", "lora", schedule=schedule)
    assert train(whole) == 0
    reference = {m["step"]: m["loss"] for m in metrics(whole, "step")}
    run = make_run(tmp_path / "run", model, data, "qwenimage", "lora", schedule=schedule)
    watcher = stop_after(run, 2)
    assert train(run) == 0
    watcher.join()
    assert status(run)["state"] == "stopped"
    assert train(run) == 0
    assert status(run)["state"] == "finished"
    assert {m["step"]: m["loss"] for m in metrics(run, "step")} == pytest.approx(reference, rel=1e-4)


@pytest.mark.slow
def test_two_processes_train_qwen_image_with_the_same_weights(tmp_path, tiny_models, kohya_dataset) -> None:
    from tests.train_helpers import launch

    run = make_run(
        tmp_path / "run",
        tiny_models("qwenimage"),
        kohya_dataset(((1, "sks dog", 4),)),
        "qwenimage",
        "lora",
        settings={"cache_text_encoder_outputs": True},
        schedule={"max_steps": 2},
        processes=2,
    )
    hashes = tmp_path / "hashes.txt"
    done = launch(run, 2, args=["--weights-hash", str(hashes)])
    assert done.returncode == 0, done.stderr[-3000:]
    assert status(run)["state"] == "finished" and [m["step"] for m in metrics(run, "step")] == [1, 2]
    final = weight_hashes(hashes, 2)
    assert sorted(rank for rank, _ in final) == ["0", "1"] and len({digest for _, digest in final}) == 1
