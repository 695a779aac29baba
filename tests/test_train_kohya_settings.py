"""The settings a kohya_ss user knows take effect in the trainer (tiny models, CPU)."""

from __future__ import annotations

import math

import pytest

from tests.train_helpers import first_batch, make_run, metrics, one_step, set_up, train

pytestmark = pytest.mark.slow


@pytest.fixture
def setup_run(tmp_path, tiny_models, kohya_dataset):
    """Factory: a set-up Trainer (model loaded, no steps) for the given settings."""
    made = []

    def factory(settings=None, schedule=None, family="sd1", prompts=None, subsets=((1, "sks dog", 3),), size=(64, 64)):
        data = kohya_dataset(subsets, size=size, name=f"data{len(made)}")
        run = make_run(tmp_path / f"run{len(made)}", tiny_models(family), data, family, settings=settings, schedule=schedule, prompts=prompts)
        trainer = set_up(run)
        made.append(trainer)
        return trainer

    yield factory
    for trainer in made:
        trainer.metrics.close()


def _snapshot(trainer):
    return {n: p.detach().clone() for n, p in trainer.session.method.named_trainable().items()}


def _changed(before, trainer):
    import torch

    return any(not torch.equal(before[n], p.detach()) for n, p in trainer.session.method.named_trainable().items())


def test_prodigy_learns_at_its_rule_and_reports_d_times_lr(setup_run):
    trainer = setup_run({"optimizer": "prodigy"}, {"learning_rate": 1.0})
    assert type(trainer.session.optim.optimizer.optimizer).__name__ == "Prodigy"
    before = _snapshot(trainer)
    one_step(trainer)
    assert _changed(before, trainer)
    group = trainer.session.optim.optimizer.param_groups[0]
    # the lr is the rate the user set (Prodigy's multiplier); its own step size is d × lr, labelled apart
    assert trainer.stepper.current_lr() == pytest.approx(1.0)
    assert trainer.stepper.step_size() == pytest.approx(group["d"] * group["lr"])
    assert not any("prodigy multiplies" in m["message"] for m in metrics(trainer.run.path, "event"))
    assert any("starts tiny" in m["message"] and "grows over the first" in m["message"] for m in metrics(trainer.run.path, "event"))


def test_a_prodigy_run_records_its_step_size_beside_the_lr(tmp_path, tiny_models, kohya_dataset, capsys):
    run = make_run(
        tmp_path / "run", tiny_models("sd1"), kohya_dataset(((1, "sks dog", 2),)), settings={"optimizer": "prodigy"}, schedule={"max_steps": 3, "learning_rate": 1.0, "save_every_epochs": 0}
    )
    assert train(run) == 0
    steps = metrics(run, "step")
    assert [s["lr"] for s in steps] == [1.0, 1.0, 1.0]
    assert steps[0]["step_size"] == pytest.approx(1e-6) and steps[-1]["step_size"] >= steps[0]["step_size"]  # d starts at d0 and only grows
    assert "step d×lr 1.00e-06" in capsys.readouterr().out


def test_prodigy_at_an_adamw_rate_is_warned_about(setup_run):
    trainer = setup_run({"optimizer": "prodigy"}, {"learning_rate": 1e-4})
    assert any("prodigy multiplies its own step-size estimate" in m["message"] for m in metrics(trainer.run.path, "event"))


def test_schedulefree_warms_up_itself_and_samples_and_saves_its_averaged_weights(setup_run):
    import torch

    trainer = setup_run({"optimizer": "schedulefree_adamw"}, {"lr_warmup_steps": 4, "lr_scheduler": "cosine", "epochs": 4})
    inner = trainer.session.optim.optimizer.optimizer
    assert type(inner).__name__ == "AdamWScheduleFree"
    assert any("keeps its own schedule" in m["message"] for m in metrics(trainer.run.path, "event"))
    assert trainer.stepper.current_lr() == pytest.approx(1e-3 / 4)  # first step of its own 4-step warm-up
    one_step(trainer)
    one_step(trainer)
    assert inner.param_groups[0]["train_mode"]
    training_point = _snapshot(trainer)
    seen = {}

    def fake_render(*args, **kwargs):
        seen["train_mode"] = inner.param_groups[0]["train_mode"]
        seen["weights"] = _snapshot(trainer)
        return []

    import core.train.outputs.sampling as sampling

    original, sampling.render_samples = sampling.render_samples, fake_render
    try:
        trainer.config.set_prompts(["a dog"])
        trainer.saver.sample()
    finally:
        sampling.render_samples = original
    assert seen["train_mode"] is False
    assert any(not torch.equal(seen["weights"][n], training_point[n]) for n in training_point)  # eval weights differ
    assert inner.param_groups[0]["train_mode"]  # back to training afterwards
    assert all(torch.allclose(training_point[n], p.detach(), atol=1e-6) for n, p in trainer.session.method.named_trainable().items())


@pytest.mark.parametrize(
    ("scheduler", "extra", "expected"),
    [
        # 12 steps, no warm-up, 3 cycles: the rate is back at its peak at steps 4 and 8
        ("cosine_with_restarts", {"lr_scheduler_num_cycles": 3}, lambda t: 0.5 * (1 + math.cos(math.pi * ((3 * t / 12) % 1)))),
        ("polynomial", {"lr_scheduler_power": 2.0}, lambda t: ((1 - t / 12) ** 2 * (1e-3 - 1e-7) + 1e-7) / 1e-3),
    ],
)
def test_kohya_schedules_follow_their_shape(setup_run, scheduler, extra, expected):
    trainer = setup_run(None, {"lr_scheduler": scheduler, "max_steps": 12, **extra})
    assert trainer.progress.total_steps == 12
    rates = []
    for _ in range(12):
        rates.append(trainer.stepper.current_lr())
        trainer.session.optim.lr_scheduler.step()
    assert rates == pytest.approx([1e-3 * expected(t) for t in range(12)], rel=1e-6)
    if scheduler == "cosine_with_restarts":
        assert rates[4] == pytest.approx(1e-3) and rates[8] == pytest.approx(1e-3)


def _comfy_delta(sd, base, shape):
    """The weight delta ComfyUI / A1111 build from a LyCORIS LoHa or LoKr key group (their reading, re-stated)."""
    import torch

    alpha = float(sd[f"{base}.alpha"]) if f"{base}.alpha" in sd else None
    if f"{base}.hada_w1_a" in sd:
        w1 = sd[f"{base}.hada_w1_a"].float() @ sd[f"{base}.hada_w1_b"].float()
        w2 = sd[f"{base}.hada_w2_a"].float() @ sd[f"{base}.hada_w2_b"].float()
        scale = alpha / sd[f"{base}.hada_w1_b"].shape[0]
        return (w1 * w2).reshape(shape) * scale
    dim = None
    if f"{base}.lokr_w1" in sd:
        w1 = sd[f"{base}.lokr_w1"].float()
    else:
        dim = sd[f"{base}.lokr_w1_b"].shape[0]
        w1 = sd[f"{base}.lokr_w1_a"].float() @ sd[f"{base}.lokr_w1_b"].float()
    if f"{base}.lokr_w2" in sd:
        w2 = sd[f"{base}.lokr_w2"].float()
    else:
        dim = sd[f"{base}.lokr_w2_b"].shape[0]
        w2 = sd[f"{base}.lokr_w2_a"].float() @ sd[f"{base}.lokr_w2_b"].float()
    if w2.ndim == 4:
        w1 = w1[:, :, None, None]
    scale = alpha / dim if alpha is not None and dim is not None else 1.0
    return torch.kron(w1, w2).reshape(shape) * scale


@pytest.mark.parametrize(("kind", "marker"), [("loha", "hada_w1_a"), ("lokr", "lokr_w1")])
def test_loha_and_lokr_save_lycoris_keys_that_reproduce_the_trained_deltas(setup_run, kind, marker):
    import torch
    from safetensors.torch import load_file

    trainer = setup_run(
        {"lora_type": kind, "lora_targets": "all", "train_text_encoder": True, "save_precision": "fp32", "lora_rank": 2, "lora_alpha": 3},
        {"epochs": 2},
    )
    for _ in range(2):
        one_step(trainer)
    trainer.saver.write_outputs(final=True)
    sd = load_file(str(trainer.run.output / "tiny.safetensors"))
    assert f"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.{marker}" in sd
    assert f"lora_te_text_model_encoder_layers_0_mlp_fc1.{marker}" in sd  # the text encoders' MLP is adapted too
    assert any(k.startswith("lora_unet_down_blocks_0_resnets_0_conv1.") for k in sd)  # LoCon-style convs with lora_targets=all
    checked = 0
    c = trainer.session.components
    denoiser_config = dict(c.denoiser.config)
    for component, module in zip((c.spec.denoiser, *c.text_encoder_names), (c.denoiser, *c.text_encoders)):
        for name, layer in module.named_modules():
            if not hasattr(layer, "get_delta_weight") or "default" not in getattr(layer, "active_adapters", []):
                continue
            base = c.runtime.kohya_base(component, name, denoiser_config)
            with torch.no_grad():
                expected = layer.get_delta_weight("default").float()
            got = _comfy_delta(sd, base, layer.get_base_layer().weight.shape)
            assert expected.abs().max() > 0, name
            assert torch.allclose(got, expected, rtol=1e-4, atol=1e-7), name
            checked += 1
    assert checked >= 20
    assert load_file(str(trainer.run.output / "peft" / "unet" / "adapter_model.safetensors"))
    meta = _metadata(trainer.run.output / "tiny.safetensors")
    assert meta["ss_network_module"] == "lycoris.kohya"
    assert f'"algo": "{kind}"' in meta["ss_network_args"]


def _metadata(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata()


def test_save_precision_is_the_dtype_of_the_saved_lora(setup_run):
    import torch
    from safetensors.torch import load_file

    for precision, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        trainer = setup_run({"save_precision": precision})
        trainer.saver.write_outputs(final=True)
        kohya = load_file(str(trainer.run.output / "tiny.safetensors"))
        diffusers = load_file(str(trainer.run.output / "diffusers" / "pytorch_lora_weights.safetensors"))
        assert {t.dtype for t in kohya.values() if t.ndim} == {dtype}
        assert {t.dtype for t in diffusers.values()} == {dtype}


#: Every key sd-scripts' train_network.py (and networks/lora.py's save_weights) writes into a
#: LoRA file trained from a folder dataset, plus sai_model_spec.py's keys for a LoRA.
SD_SCRIPTS_KEYS = [
    "ss_session_id",
    "ss_training_started_at",
    "ss_output_name",
    "ss_learning_rate",
    "ss_text_encoder_lr",
    "ss_unet_lr",
    "ss_num_train_images",
    "ss_num_validation_images",
    "ss_num_reg_images",
    "ss_num_batches_per_epoch",
    "ss_num_epochs",
    "ss_gradient_checkpointing",
    "ss_gradient_accumulation_steps",
    "ss_max_train_steps",
    "ss_lr_warmup_steps",
    "ss_lr_scheduler",
    "ss_network_module",
    "ss_network_dim",
    "ss_network_alpha",
    "ss_network_dropout",
    "ss_mixed_precision",
    "ss_full_fp16",
    "ss_v2",
    "ss_base_model_version",
    "ss_clip_skip",
    "ss_max_token_length",
    "ss_cache_latents",
    "ss_seed",
    "ss_lowram",
    "ss_noise_offset",
    "ss_multires_noise_iterations",
    "ss_multires_noise_discount",
    "ss_adaptive_noise_scale",
    "ss_zero_terminal_snr",
    "ss_training_comment",
    "ss_sd_scripts_commit_hash",
    "ss_optimizer",
    "ss_max_grad_norm",
    "ss_caption_dropout_rate",
    "ss_caption_dropout_every_n_epochs",
    "ss_caption_tag_dropout_rate",
    "ss_face_crop_aug_range",
    "ss_prior_loss_weight",
    "ss_min_snr_gamma",
    "ss_scale_weight_norms",
    "ss_ip_noise_gamma",
    "ss_debiased_estimation",
    "ss_noise_offset_random_strength",
    "ss_ip_noise_gamma_random_strength",
    "ss_loss_type",
    "ss_huber_schedule",
    "ss_huber_scale",
    "ss_huber_c",
    "ss_fp8_base",
    "ss_fp8_base_unet",
    "ss_validation_seed",
    "ss_validation_split",
    "ss_max_validation_steps",
    "ss_validate_every_n_epochs",
    "ss_validate_every_n_steps",
    "ss_resize_interpolation",
    "ss_datasets",
    "ss_tag_frequency",
    "ss_dataset_dirs",
    "ss_reg_dataset_dirs",
    "ss_bucket_info",
    "ss_batch_size_per_device",
    "ss_total_batch_size",
    "ss_resolution",
    "ss_color_aug",
    "ss_flip_aug",
    "ss_random_crop",
    "ss_shuffle_caption",
    "ss_enable_bucket",
    "ss_bucket_no_upscale",
    "ss_min_bucket_reso",
    "ss_max_bucket_reso",
    "ss_keep_tokens",
    "ss_network_args",
    "ss_sd_model_name",
    "ss_training_finished_at",
    "ss_steps",
    "ss_epoch",
    "sshs_model_hash",
    "sshs_legacy_hash",
    "modelspec.sai_model_spec",
    "modelspec.architecture",
    "modelspec.implementation",
    "modelspec.title",
    "modelspec.resolution",
    "modelspec.date",
    "modelspec.prediction_type",
    "modelspec.implementation_version",
    "modelspec.encoder_layer",
]


def test_lora_metadata_has_every_key_sd_scripts_writes_with_the_run_facts(setup_run, tmp_path):
    import hashlib
    import json
    import time

    from safetensors.torch import load_file, save

    trainer = setup_run(
        {"clip_skip": 2, "lora_targets": "all", "caption_prefix": "photo"},
        {"epochs": 2},
        subsets=((2, "sks dog", 3), (1, "red ball", 2)),
    )
    one_step(trainer)
    time.sleep(0.05)
    trainer.progress.step = 1
    trainer.saver.write_outputs(final=True)
    path = trainer.run.output / "tiny.safetensors"
    meta = _metadata(path)
    missing = [k for k in SD_SCRIPTS_KEYS if k not in meta]
    assert not missing
    assert float(meta["ss_training_finished_at"]) > float(meta["ss_training_started_at"])
    assert meta["ss_clip_skip"] == "2" and meta["modelspec.encoder_layer"] == "2"
    assert meta["ss_base_model_version"] == "sd_v1" and meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert json.loads(meta["ss_dataset_dirs"]) == {"2_sks dog": {"n_repeats": 2, "img_count": 3}, "1_red ball": {"n_repeats": 1, "img_count": 2}}
    tags = json.loads(meta["ss_tag_frequency"])
    assert set(tags) == {"2_sks dog", "1_red ball"} and sum(tags["2_sks dog"].values()) >= 3
    buckets = json.loads(meta["ss_bucket_info"])
    assert sum(b["count"] for b in buckets["buckets"].values()) == 2 * 3 + 2  # images × repeats
    assert meta["ss_num_train_images"] == "8" and meta["ss_steps"] == "1" and meta["ss_total_batch_size"] == "1"
    assert json.loads(meta["ss_network_args"]) == {"conv_dim": "4", "conv_alpha": "4"}
    assert meta["ss_optimizer"] == "torch.optim.adamw.AdamW"
    # the hashes are what sd-webui-additional-networks recomputes from the file
    tensors = load_file(str(path))
    data = save(tensors, metadata={k: v for k, v in meta.items() if k.startswith("ss_")})
    header = int.from_bytes(data[:8], "little")
    assert meta["sshs_model_hash"] == hashlib.sha256(data[8 + header :]).hexdigest()


def test_ss_epoch_of_a_step_mode_run_is_the_epochs_it_trained(tmp_path, tiny_models, kohya_dataset):
    # 2 images, batch 1: 2 steps an epoch, so 5 steps reach into the third epoch
    run = make_run(tmp_path / "run", tiny_models("sd1"), kohya_dataset(((1, "sks dog", 2),)), schedule={"max_steps": 5, "save_every_epochs": 0})
    assert train(run) == 0
    meta = _metadata(run / "output" / "tiny.safetensors")
    assert meta["ss_steps"] == "5" and meta["ss_epoch"] == "3" and meta["ss_num_epochs"] == "3"


def test_sd2_v_prediction_is_named_as_sd_scripts_names_it():
    from core.families import runtime

    sd2 = runtime("sd2")
    assert sd2.kohya_metadata(True)["ss_base_model_version"] == "sd_v2_v" and sd2.kohya_metadata(False)["ss_base_model_version"] == "sd_v2"
    assert sd2.kohya_metadata(True)["modelspec.architecture"] == "stable-diffusion-v2-768-v/lora"
    assert runtime("sdxl").kohya_metadata(False)["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"


def test_tensorboard_event_files_hold_loss_lr_and_samples(tmp_path, tiny_models, kohya_dataset):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = kohya_dataset(((1, "sks dog", 2),))
    run = make_run(
        tmp_path / "run",
        tiny_models("sd1"),
        data,
        schedule={"epochs": 2, "sample_every_steps": 2},
        prompts=["a photo of sks dog --w 64 --h 64 --s 2 --ss euler_a"],
    )
    assert train(run) == 0
    events = EventAccumulator(str(run / "tb"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert {"loss", "lr", "images_per_s"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("loss")] == [1, 2, 3, 4]
    losses = [m["loss"] for m in metrics(run, "step")]
    assert [e.value for e in events.Scalars("loss")] == pytest.approx(losses, rel=1e-6)
    assert tags["images"] == ["samples/p00"]
    images = events.Images("samples/p00")
    assert [i.step for i in images] == [2, 4] and (images[0].width, images[0].height) == (64, 64)


def test_wandb_project_without_wandb_is_one_sentence_before_and_at_start(tmp_path, tiny_models, kohya_dataset):
    import tomlkit

    from core.config import load_config
    from core.errors import UserError
    from core.gpu import GpuSet
    from core.launch import preflight as pf

    run = make_run(tmp_path / "run", tiny_models("sd1"), kohya_dataset(((1, "sks dog", 1),)))
    doc = tomlkit.parse((run / "run.toml").read_text())
    doc["logging"] = {"wandb_project": "my-loras"}
    (run / "run.toml").write_text(tomlkit.dumps(doc))
    with pytest.raises(UserError, match=r"wandb_project is set but the wandb package is not installed; install it \(pip install wandb\)"):
        pf.preflight(load_config(run / "run.toml"), tmp_path / "runs", GpuSet([]))
    assert train(run) == 1
    from tests.train_helpers import status

    assert "pip install wandb" in status(run)["error"]


def test_clip_skip_takes_the_layer_kohya_takes(setup_run):
    import torch

    from core.train.model.text import encode_text, tokenize

    trainer = setup_run({"clip_skip": 2})
    c = trainer.session.components
    ids = tokenize(c, ["a photo of sks dog"])
    encoder = c.text_encoders[0]
    with torch.no_grad():
        got = encode_text(c, ids, clip_skip=2).prompt_embeds
        states = encoder(ids[0], output_hidden_states=True).hidden_states
        last = encode_text(c, ids).prompt_embeds
    torch.testing.assert_close(got, encoder.final_layer_norm(states[-2]))
    assert not torch.allclose(got, last)
    with torch.no_grad():
        hidden, _ = trainer.stepper.conditioning(first_batch(trainer))  # what the training step feeds the UNet
    torch.testing.assert_close(hidden, encode_text(c, tokenize(c, first_batch(trainer)["captions"]), clip_skip=2).prompt_embeds)


def test_caption_prefix_suffix_and_tag_dropout():
    import random

    from core.train.data.captions import process_caption, with_prefix_suffix

    assert with_prefix_suffix("dog, grass", {"caption_prefix": "sks,", "caption_suffix": ", best"}) == "sks, dog, grass , best"
    settings = {"caption_tag_dropout_rate": 0.5, "keep_tokens": 1}
    outs = [process_caption("sks, a, b, c, d", settings, random.Random(seed)) for seed in range(200)]
    assert all(o.startswith("sks") for o in outs)  # kept tokens never drop
    lengths = {len(o.split(", ")) for o in outs}
    assert min(lengths) == 1 and max(lengths) == 5
    assert process_caption("sks, a, b", {"caption_tag_dropout_rate": 0.0}, random.Random(0)) == "sks, a, b"


def test_bucket_no_upscale_gives_small_images_their_own_size_in_planner_and_trainer(setup_run):
    from core.dataset.buckets import bucket_selector, no_upscale_bucket

    assert no_upscale_bucket(1000, 600, 512, 64) == (640, 384)  # shrunk to the area, kohya's rounding
    assert no_upscale_bucket(300, 200, 512, 64) == (256, 192)  # smaller than the area: never enlarged
    settings = {"bucket_no_upscale": True, "resolution": 64, "bucket_reso_steps": 8, "min_bucket_reso": 64, "max_bucket_reso": 128}
    trainer = setup_run(settings, size=(56, 48))
    assert {item.bucket for item in trainer.session.data.train_data.items} == {(56, 48)}
    assert bucket_selector({**settings, "bucket_no_upscale": False})(56, 48) != (56, 48)
    pixels = first_batch(trainer)["pixel_values"]
    assert tuple(pixels.shape[-2:]) == (48, 56)


@pytest.mark.parametrize("kind", ["lora", "loha"])
def test_trainable_text_encoder_parameters_follow_the_targets_as_the_estimator_counts(setup_run, tiny_models, kind):
    from transformers import CLIPTextModel

    from bench.measure_params import describe
    from core.memory.trainable import adapter_parameters

    fresh = CLIPTextModel.from_pretrained(str(tiny_models("sd1") / "text_encoder"))
    widths = describe("sd1", "text_encoder", fresh)["lora_width"]
    assert widths["attn_ff"] > widths["attn"]  # the MLP's fc1/fc2 are counted
    for targets in ("attn", "attn_ff"):
        trainer = setup_run({"lora_type": kind, "lora_targets": targets, "train_text_encoder": True})
        te = sum(p.numel() for n, p in trainer.session.method.named_trainable().items() if n.startswith("text_encoder."))
        assert te == adapter_parameters(kind, 4, widths[targets])


def test_estimator_counts_loha_deltas_and_the_new_optimizers_state():
    from core.memory import estimate

    base = {"lora_rank": 16, "gradient_checkpointing": False, "optimizer": "adamw"}
    lora = estimate("sd1", "lora", base, 1)
    loha = estimate("sd1", "lora", {**base, "lora_type": "loha"}, 1)
    assert loha.breakdown["weights_adapters"] == 2 * lora.breakdown["weights_adapters"]
    assert loha.total_bytes > lora.total_bytes + 90e6 * 4  # every adapted layer's delta weight is held
    prodigy = estimate("sd1", "lora", {**base, "optimizer": "prodigy"}, 1)
    assert prodigy.breakdown["optimizer_states"] == 2 * lora.breakdown["optimizer_states"]


@pytest.mark.parametrize(("kind", "source"), [("lora", "kohya"), ("lora", "diffusers"), ("lokr", "kohya")])
def test_init_lora_starts_the_first_step_from_the_files_weights(setup_run, kind, source):
    import torch

    first = setup_run({"lora_type": kind, "train_text_encoder": True, "save_precision": "fp32", "lora_alpha": 2})
    for _ in range(2):
        one_step(first)
    first.saver.write_outputs(final=True)
    trained = _snapshot(first)
    file = first.run.output / ("tiny.safetensors" if source == "kohya" else "diffusers/pytorch_lora_weights.safetensors")
    alpha = 2 if source == "diffusers" else 8  # a kohya alpha that differs is folded in: the deltas stay the file's
    second = setup_run({"lora_type": kind, "train_text_encoder": True, "init_lora": str(file), "lora_alpha": alpha})
    assert any("starting from the LoRA" in m["message"] for m in metrics(second.run.path, "event"))
    start = _snapshot(second)
    assert set(start) == set(trained)

    def deltas(trainer):
        out = {}
        for name, module in trainer.session.components.denoiser.named_modules():
            if hasattr(module, "get_delta_weight") and "default" in getattr(module, "active_adapters", []):
                with torch.no_grad():
                    out[name] = module.get_delta_weight("default").float()
        return out

    before, after = deltas(first), deltas(second)
    assert before and all(torch.allclose(before[n], after[n], atol=1e-6) for n in before)
    if alpha == 2:
        assert all(torch.equal(trained[n], start[n]) for n in trained)
    loss = one_step(second)
    assert math.isfinite(loss)


def test_init_lora_with_another_rank_or_a_missing_file_is_one_sentence(setup_run, tmp_path):
    from core.errors import UserError

    first = setup_run()
    first.saver.write_outputs(final=True)
    with pytest.raises(UserError, match=r"settings.init_lora .* does not exist"):
        setup_run({"init_lora": str(tmp_path / "nope.safetensors")})
    with pytest.raises(UserError, match=r"set lora_rank \(and lora_type, lora_targets\) to what the file was trained with"):
        setup_run({"init_lora": str(first.run.output / "tiny.safetensors"), "lora_rank": 8})


def test_a_schedulefree_checkpoint_resumes_at_the_training_point(setup_run):
    import torch

    from tests.train_helpers import set_up

    trainer = setup_run({"optimizer": "schedulefree_adamw"}, {"epochs": 4})
    one_step(trainer)
    one_step(trainer)
    trainer.progress.step = 2
    trainer.saver.save()
    assert trainer.session.optim.optimizer.optimizer.param_groups[0]["train_mode"]
    one_step(trainer)
    expected = _snapshot(trainer)
    resumed = set_up(trainer.run.path)
    try:
        assert resumed.progress.step == 2 and resumed.session.optim.optimizer.optimizer.param_groups[0]["train_mode"]
        one_step(resumed)
        got = _snapshot(resumed)
        assert all(torch.allclose(expected[n], got[n], atol=1e-6) for n in expected)
    finally:
        resumed.metrics.close()


def test_estimator_keeps_the_text_encoder_when_tag_dropout_blocks_its_cache():
    from core.memory import estimate

    base = {"cache_text_encoder_outputs": True, "optimizer": "adamw"}
    cached = estimate("sdxl", "lora", base, 1)
    dropped = estimate("sdxl", "lora", {**base, "caption_tag_dropout_rate": 0.1}, 1)
    assert cached.breakdown["weights_text_encoders"] == 0 < dropped.breakdown["weights_text_encoders"]
    assert any("not cached" in n for n in dropped.notes)


def test_output_name_and_folder_are_where_the_outputs_go(tmp_path, tiny_models, kohya_dataset):
    from core.config import load_config

    run = make_run(
        tmp_path / "run",
        tiny_models("sd1"),
        kohya_dataset(((1, "sks dog", 1),)),
        settings={"output_name": "sksDog_v1", "output_dir": str(tmp_path / "loras")},
        schedule={"max_steps": 1, "save_every_epochs": 0},
    )
    assert train(run) == 0
    assert (tmp_path / "loras" / "sksDog_v1.safetensors").is_file()
    assert _metadata(tmp_path / "loras" / "sksDog_v1.safetensors")["ss_output_name"] == "sksDog_v1"
    assert not (run / "output" / "tiny.safetensors").exists()
    from core.runs.rundir import RunDir

    assert tmp_path / "loras" / "sksDog_v1.safetensors" in RunDir(run).outputs()
    doc = (run / "run.toml").read_text().replace(str(tmp_path / "loras"), "../loras")
    (run / "run.toml").write_text(doc)
    assert load_config(run / "run.toml").settings["output_dir"] == str(tmp_path / "loras")  # relative to the run.toml
