"""Every memory and speed option of [settings] really takes effect in the trainer."""

from __future__ import annotations

import pytest

from core.plan.schedule import steps_per_epoch
from tests.train_helpers import first_batch, make_run, metrics, one_step, set_up, status, train

pytestmark = pytest.mark.slow


@pytest.fixture
def setup_run(tmp_path, tiny_models, kohya_dataset):
    """Factory: a set-up Trainer (model loaded, no steps) for the given settings."""
    made = []

    def factory(settings=None, method="lora", family="sd1", schedule=None, model_extra=None):
        data = kohya_dataset(((1, "sks dog", 3),))
        run = make_run(tmp_path / f"run{len(made)}", tiny_models(family), data, family, method, settings=settings, schedule=schedule)
        if model_extra:
            import tomlkit

            doc = tomlkit.parse((run / "run.toml").read_text())
            doc["model"].update(model_extra)
            (run / "run.toml").write_text(tomlkit.dumps(doc))
        trainer = set_up(run)
        made.append(trainer)
        return trainer

    yield factory
    for trainer in made:
        trainer.metrics.close()


def _changed(before, trainer):
    import torch

    return any(not torch.equal(before[n], p.detach()) for n, p in trainer.session.method.named_trainable().items())


def _snapshot(trainer):
    return {n: p.detach().clone() for n, p in trainer.session.method.named_trainable().items()}


@pytest.mark.parametrize(("name", "cls"), [("adamw", "AdamW"), ("adamw8bit", "AdamW8bit"), ("lion", "Lion"), ("lion8bit", "Lion8bit"), ("adafactor", "Adafactor")])
def test_each_optimizer_is_used_and_steps_on_the_cpu(setup_run, name, cls):
    trainer = setup_run({"optimizer": name})
    assert type(trainer.session.optim.optimizer.optimizer).__name__ == cls
    before = _snapshot(trainer)
    one_step(trainer)
    assert _changed(before, trainer)


@pytest.mark.parametrize("name", ["adamw", "lion", "prodigy", "schedulefree_adamw"])
def test_the_optimizer_arguments_of_run_toml_reach_the_optimizer(setup_run, name):
    settings = {"optimizer": name, "weight_decay": 0.05, "beta1": 0.8, "prodigy_d_coef": 0.5, "prodigy_safeguard_warmup": False}
    group = setup_run(settings).session.optim.optimizer.optimizer.param_groups[0]
    second = 0.99 if name == "lion" else 0.999  # beta2 = 0 keeps the optimizer's own
    assert group["weight_decay"] == 0.05 and tuple(group["betas"]) == (0.8, second)
    if name == "prodigy":
        assert group["d_coef"] == 0.5 and group["safeguard_warmup"] is False


def test_lokr_factor_and_conv_rank_shape_the_adapter(setup_run):
    trainer = setup_run({"lora_type": "lokr", "lokr_factor": 4, "lora_targets": "all", "lora_rank": 8, "conv_rank": 2, "conv_alpha": 1.0})
    config = trainer.session.components.denoiser.peft_config["default"]
    assert config.decompose_factor == 4
    assert config.rank_pattern and set(config.rank_pattern.values()) == {2} and set(config.alpha_pattern.values()) == {1.0}
    assert all(".conv" in name or "conv_shortcut" in name or "proj_" in name for name in config.rank_pattern)


@pytest.mark.parametrize(("attention", "cls"), [("sdpa", "AttnProcessor2_0"), ("eager", "AttnProcessor")])
def test_attention_setting_picks_the_processor(setup_run, attention, cls):
    trainer = setup_run({"attention": attention})
    assert {type(p).__name__ for p in trainer.session.components.denoiser.attn_processors.values()} == {cls}


def test_channels_last_and_gradient_checkpointing(setup_run):
    import torch

    on = setup_run({"channels_last": True, "gradient_checkpointing": True, "train_text_encoder": True})
    off = setup_run({"channels_last": False, "gradient_checkpointing": False})
    # on the CPU channels-last is slower, so it is left off with an event saying so
    assert not on.session.components.denoiser.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert not off.session.components.denoiser.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert any("channels_last is for GPUs" in m["message"] for m in metrics(on.run.path, "event"))
    assert not any("channels_last" in m["message"] for m in metrics(off.run.path, "event"))
    assert on.session.components.denoiser.is_gradient_checkpointing and not off.session.components.denoiser.is_gradient_checkpointing
    assert on.session.components.text_encoders[0].is_gradient_checkpointing
    one_step(on)


def test_fp16_on_the_cpu_is_refused_in_one_sentence(tmp_path, tiny_models, kohya_dataset):
    # accelerate has no fp16 autocast on the CPU: the run fails at once with the fix, instead of
    # training (and sampling) in another precision than the one asked for
    run = make_run(tmp_path / "run", tiny_models("sd1"), kohya_dataset(((1, "sks dog", 1),)), settings={"mixed_precision": "fp16"})
    assert train(run) == 1
    recorded = status(run)
    assert recorded["state"] == "failed"
    assert recorded["error"] == 'settings.mixed_precision = "fp16" needs a GPU (accelerate has no fp16 autocast on the CPU); set mixed_precision to "bf16" or "no" to train on the CPU'


def test_bf16_keeps_frozen_weights_in_bf16_and_lora_in_fp32(setup_run):
    import torch

    trainer = setup_run({"mixed_precision": "bf16"})
    assert trainer.session.acc.mixed_precision == "bf16"
    assert trainer.session.components.denoiser.conv_in.weight.dtype == torch.bfloat16
    assert {p.dtype for p in trainer.session.method.parameters()} == {torch.float32}
    assert one_step(trainer) > 0


def test_full_bf16_trains_bf16_weights(setup_run):
    import torch

    trainer = setup_run({"mixed_precision": "bf16", "full_bf16": True}, method="finetune")
    assert {p.dtype for p in trainer.session.method.parameters()} == {torch.bfloat16}
    before = _snapshot(trainer)
    one_step(trainer)
    assert _changed(before, trainer)


def test_cached_latents_keep_the_vae_out_of_the_steps(setup_run, monkeypatch):
    cached = setup_run({"cache_latents": True, "cache_latents_to_disk": True})
    live = setup_run({"cache_latents": False})
    calls = []
    for trainer in (cached, live):
        original = trainer.session.components.vae.encode
        monkeypatch.setattr(trainer.session.components.vae, "encode", lambda x, _o=original, _t=trainer: calls.append(_t) or _o(x))
    one_step(cached)
    one_step(live)
    assert cached not in calls and live in calls
    from core.train.data.latent_cache import default_cache_dir

    assert cached.session.data.train_data.latents.files  # training reads the shared cache folder's files
    assert all(default_cache_dir() in path.parents for path in cached.session.data.train_data.latents.files.values())
    assert not (cached.run.path / "cache").exists()


def test_cached_text_outputs_keep_the_text_encoder_out_of_the_steps(setup_run, monkeypatch):
    trainer = setup_run({"cache_text_encoder_outputs": True})
    encoder = trainer.session.components.text_encoders[0]
    calls = []
    monkeypatch.setattr(encoder, "forward", lambda *a, **k: calls.append(1))
    batch = first_batch(trainer)
    assert "hidden_states" in batch["text"]
    one_step(trainer)
    assert calls == []


def test_text_outputs_are_not_cached_when_the_text_encoder_trains(setup_run):
    trainer = setup_run({"cache_text_encoder_outputs": True, "train_text_encoder": True})
    assert "text" not in first_batch(trainer)
    assert any("computed every step" in m["message"] for m in metrics(trainer.run.path, "event"))


def test_gradient_accumulation_reduces_the_optimizer_steps(tmp_path, tiny_models, kohya_dataset):
    data = kohya_dataset(((1, "sks dog", 3),))
    run = make_run(tmp_path / "run", tiny_models("sdxl"), data, "sdxl", "lora", schedule={"epochs": 2, "gradient_accumulation": 2})
    assert train(run) == 0
    expected = steps_per_epoch({"b": 3}, 1, 1, 2) * 2
    assert expected == 4
    assert [m["step"] for m in metrics(run, "step")] == [1, 2, 3, 4]


def test_ema_weights_differ_from_the_live_weights(setup_run):
    import torch

    trainer = setup_run({"ema": True, "ema_decay": 0.9}, method="finetune")
    for _ in range(2):
        one_step(trainer)
    live = trainer.session.method.parameters()
    assert any(not torch.equal(e, p.detach()) for e, p in zip(trainer.session.model.ema.shadow_params, live))


def test_max_grad_norm_clips_the_gradients(setup_run, monkeypatch):
    import torch

    trainer = setup_run({"max_grad_norm": 0.01}, method="finetune")
    norms = []
    clip = trainer.session.acc.clip_grad_norm_

    def spy(params, max_norm):
        params = list(params)
        result = clip(params, max_norm)
        norms.append((float(result), float(torch.norm(torch.stack([p.grad.norm() for p in params if p.grad is not None])))))
        return result

    monkeypatch.setattr(trainer.session.acc, "clip_grad_norm_", spy)
    one_step(trainer)
    ((before, after),) = norms
    assert before > 0.01 and after == pytest.approx(0.01, rel=1e-3)


def test_fused_backward_pass_steps_each_parameter_inside_backward(setup_run):
    trainer = setup_run({"fused_backward_pass": True, "optimizer": "adafactor"}, method="finetune")
    assert trainer.session.optim.fused is not None and len(trainer.session.optim.fused.optimizers) == len(trainer.session.method.parameters())
    before = _snapshot(trainer)
    trainer.stepper.micro_step(first_batch(trainer), 0, True, 1)
    # already stepped inside backward, and every gradient freed at once
    assert _changed(before, trainer)
    assert all(p.grad is None for p in trainer.session.method.parameters())


def test_min_snr_and_noise_offset_change_the_loss(setup_run):
    import torch

    from core.families.objectives import min_snr_weights

    trainer = setup_run()
    batch = first_batch(trainer)
    with torch.no_grad():
        plain = float(trainer.stepper.loss(batch, 0))
        trainer.session.settings["min_snr_gamma"] = 5.0
        snr = float(trainer.stepper.loss(batch, 0))
        trainer.session.settings["min_snr_gamma"] = 0.0
        trainer.session.settings["noise_offset"] = 0.1
        offset = float(trainer.stepper.loss(batch, 0))
        trainer.session.settings["noise_offset"] = 0.0
        again = float(trainer.stepper.loss(batch, 0))
    assert again == plain and snr != plain and offset != plain
    scheduler = trainer.session.components.noise_scheduler
    t = torch.tensor([10, 900])
    alpha = scheduler.alphas_cumprod[t]
    snr_t = alpha / (1 - alpha)
    assert torch.allclose(min_snr_weights(scheduler, t, 5.0, "epsilon"), torch.clamp(snr_t, max=5.0) / snr_t)


def test_v_prediction_trains_on_the_velocity(setup_run, monkeypatch):
    trainer = setup_run(model_extra={"prediction_type": "v_prediction"})
    assert trainer.session.components.prediction_type == "v_prediction"
    calls = []
    scheduler = trainer.session.components.noise_scheduler
    original = scheduler.get_velocity
    monkeypatch.setattr(scheduler, "get_velocity", lambda *a: calls.append(1) or original(*a))
    one_step(trainer)
    assert calls == [1]


def test_sdxl_gets_size_and_crop_conditioning(setup_run):
    trainer = setup_run(family="sdxl")
    batch = first_batch(trainer)
    hidden, added = trainer.stepper.conditioning(batch)
    (oh, ow), (top, left), (th, tw) = batch["original_sizes"][0], batch["crop_top_lefts"][0], batch["target_sizes"][0]
    assert added["time_ids"][0].tolist() == [oh, ow, top, left, th, tw]
    assert added["text_embeds"].shape[0] == 1 and hidden.shape[-1] == trainer.session.components.denoiser.config.cross_attention_dim


def test_torch_compile_wraps_the_unet(setup_run):
    trainer = setup_run({"torch_compile": True})
    assert type(trainer.session.optim.wrapped["unet"]).__name__ == "OptimizedModule"


def test_lr_follows_the_warmup_schedule_per_optimizer_step(tmp_path, tiny_models, kohya_dataset):
    data = kohya_dataset(((1, "sks dog", 2),))
    run = make_run(tmp_path / "run", tiny_models("sdxl"), data, "sdxl", "lora", schedule={"max_steps": 5, "lr_scheduler": "linear", "lr_warmup_steps": 2, "learning_rate": 1e-3})
    assert train(run) == 0
    lrs = [m["lr"] for m in metrics(run, "step")]
    expected = [1e-3 * (k / 2 if k < 2 else (5 - k) / 3) for k in range(5)]
    assert lrs == pytest.approx(expected)


@pytest.mark.parametrize(
    ("targets", "present", "absent"),
    [("attn", "attn1.to_q", "ff.net.2"), ("attn_ff", "ff.net.2", "conv1"), ("all", "resnets.0.conv1", None)],
)
def test_lora_targets_rank_and_text_encoder(setup_run, targets, present, absent):
    trainer = setup_run({"lora_targets": targets, "lora_rank": 3, "train_text_encoder": targets == "all", "use_dora": targets == "all"})
    names = list(trainer.session.method.named_trainable())
    assert any(present in n and "lora_A" in n for n in names)
    if absent:
        assert not any(absent in n for n in names)
    assert {p.shape[0] for n, p in trainer.session.method.named_trainable().items() if "denoiser." in n and "lora_A" in n} == {3}
    te_names = [n for n in names if n.startswith("text_encoder.")]
    if targets == "all":
        assert any("q_proj.lora_A" in n for n in te_names)
        assert any("lora_magnitude_vector" in n for n in names)  # DoRA
    else:
        assert te_names == []


def test_caches_that_would_freeze_augmentations_are_skipped_with_a_warning(setup_run):
    trainer = setup_run({"cache_latents": True, "flip_aug": True, "cache_text_encoder_outputs": True, "shuffle_caption": True})
    batch = first_batch(trainer)
    assert "pixel_values" in batch and "prompt_embeds" not in batch
    warnings = " ".join(m["message"] for m in metrics(trainer.run.path, "event") if m["level"] == "warning")
    infos = " ".join(m["message"] for m in metrics(trainer.run.path, "event") if m["level"] == "info")
    assert "flip_aug" in warnings  # the latent cache was asked for and cannot be used
    assert "shuffled captions" in infos  # the text cache is on by default: falling back is no warning


@pytest.mark.parametrize("fused", [False, True])
def test_text_encoder_lr_is_the_text_encoders_own_rate(setup_run, fused):
    trainer = setup_run(
        {"train_text_encoder": True, "fused_backward_pass": fused},
        schedule={"learning_rate": 1e-3, "text_encoder_lr": 2e-4, "lr_scheduler": "constant", "lr_warmup_steps": 0},
    )
    rates = {id(p): group["lr"] for group in trainer.session.optim.optimizer.param_groups for p in group["params"]}
    trained = trainer.session.method.named_trainable()
    assert {rates[id(p)] for n, p in trained.items() if n.startswith("denoiser.")} == {1e-3}
    assert {rates[id(p)] for n, p in trained.items() if n.startswith("text_encoder.")} == {2e-4}
    # The step really moves the text encoder's LoRA by its own rate: AdamW's first step changes
    # each weight by about lr, so the largest change tells the two rates apart.
    before = _snapshot(trainer)
    one_step(trainer)
    moved = {n: float((p.detach() - before[n]).abs().max()) for n, p in trained.items()}
    assert max(v for n, v in moved.items() if n.startswith("text_encoder.")) == pytest.approx(2e-4, rel=0.2)
    assert max(v for n, v in moved.items() if n.startswith("denoiser.")) == pytest.approx(1e-3, rel=0.2)


def test_a_zero_text_encoder_lr_means_the_learning_rate(setup_run):
    trainer = setup_run({"train_text_encoder": True}, schedule={"learning_rate": 5e-4, "text_encoder_lr": 0.0, "lr_scheduler": "constant"})
    assert [group["initial_lr"] for group in trainer.session.optim.optimizer.param_groups] == [5e-4, 5e-4]


def test_text_cache_on_disk_trains_reading_the_captions_from_files(setup_run, monkeypatch):
    from core.train.data import text_cache

    trainer = setup_run({"cache_text_encoder_outputs_to_disk": True})
    cache = trainer.session.data.train_data.text_cache
    assert cache is not None and cache.entries == {} and len(cache.files) == len(cache) > 0
    reads = []
    original = text_cache.read_entry
    monkeypatch.setattr(text_cache, "read_entry", lambda path: reads.append(path) or original(path))
    before = {n: p.detach().clone() for n, p in trainer.session.method.named_trainable().items()}
    one_step(trainer)
    assert reads and set(reads) <= set(cache.files.values())
    assert _changed(before, trainer)
