"""Each training method trains the tiny SD1 and SDXL models and writes metrics, checkpoints and outputs."""

from __future__ import annotations

import math

import pytest

from core.plan.schedule import steps_per_epoch
from tests.conftest import make_kohya
from tests.train_helpers import add_reg_subset, first_batch, make_run, metrics, one_step, set_up, status, train

pytestmark = pytest.mark.slow

TI = {"placeholder_token": "<sks>"}


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
@pytest.mark.parametrize("method", ["lora", "dreambooth", "finetune", "textual_inversion"])
def test_method_trains_and_writes_its_outputs(tmp_path, tiny_models, kohya_dataset, family, method):
    from safetensors.torch import load_file

    data = kohya_dataset(((1, "sks dog", 2),))
    prompt = "a photo of <sks> dog --w 64 --h 64 --s 2" if method == "textual_inversion" else "sks dog on a beach --w 64 --h 64 --s 2 --d 5"
    run = make_run(
        tmp_path / "run",
        tiny_models(family),
        data,
        family,
        method,
        schedule={"max_steps": 2, "sample_every_steps": 2},
        prompts=[prompt],
        method_extra=TI if method == "textual_inversion" else None,
    )

    assert train(run) == 0

    state = status(run)
    assert (state["state"], state["step"], state["total_steps"]) == ("finished", 2, 2)
    steps = metrics(run, "step")
    assert [s["step"] for s in steps] == [1, 2]
    assert all(math.isfinite(s["loss"]) and s["lr"] > 0 and s["mem"][0]["peak"] > 0 for s in steps)
    assert (run / "checkpoints" / "step-2" / "state.json").is_file()
    (sample,) = metrics(run, "sample")
    assert (sample["step"], sample["prompt_index"], sample["prompt"]) == (2, 0, prompt)
    assert (run / sample["path"]).read_bytes()[:4] == b"\x89PNG"
    out = run / "output"
    if method == "lora":
        kohya = load_file(str(out / "tiny.safetensors"))
        assert any(k.startswith("lora_unet_") and k.endswith(".lora_down.weight") for k in kohya)
        assert (out / "diffusers" / "pytorch_lora_weights.safetensors").is_file()
    elif method == "textual_inversion":
        embedding = load_file(str(out / "sks.safetensors"))
        vectors = embedding["clip_l"] if family == "sdxl" else embedding["emb_params"]
        assert vectors.shape == (4, 32)
    else:
        assert (out / "diffusers" / "model_index.json").is_file()
        assert (out / "tiny.safetensors").stat().st_size > 100_000


def test_textual_inversion_changes_only_the_new_rows(tmp_path, tiny_models, kohya_dataset):
    import torch
    from transformers import CLIPTextModel

    model = tiny_models("sd1")
    run = make_run(tmp_path / "run", model, kohya_dataset(), "sd1", "textual_inversion", settings={"ti_num_vectors": 2, "ti_init_word": "dog"}, method_extra=TI)
    trainer = set_up(run)
    weight = trainer.session.components.text_encoders[0].get_input_embeddings().weight
    start = weight.detach().clone()
    for _ in range(2):
        one_step(trainer)
    trainer.metrics.close()

    original = CLIPTextModel.from_pretrained(str(model / "text_encoder")).get_input_embeddings().weight.detach()
    tokenizer = trainer.session.components.tokenizers[0]
    new = tokenizer.convert_tokens_to_ids(["<sks>", "<sks>_1"])
    others = [i for i in range(weight.shape[0]) if i not in new]
    assert torch.equal(weight.detach()[others], original[others])
    assert not torch.equal(weight.detach()[new], start[new])
    assert torch.equal(start[new[0]], original[tokenizer("dog", add_special_tokens=False).input_ids[0]])


def test_dreambooth_pairs_each_instance_image_with_a_class_image(tmp_path, tiny_models, kohya_dataset):
    import torch

    data = kohya_dataset(((2, "sks dog", 3),))
    reg = make_kohya(tmp_path / "reg", ((1, "dog", 2),))
    run = make_run(tmp_path / "run", tiny_models("sd1"), data, "sd1", "dreambooth", settings={"prior_loss_weight": 0.5})
    add_reg_subset(run, reg / "1_dog")
    trainer = set_up(run)
    batch = first_batch(trainer)
    losses = {}
    with torch.no_grad():
        for weight in (0.0, 0.5, 1.0):
            trainer.session.settings["prior_loss_weight"] = weight
            losses[weight] = float(trainer.stepper.loss(batch, 0))
    trainer.metrics.close()

    # loss = instance loss + prior_loss_weight x class loss
    assert losses[1.0] > losses[0.0]
    assert losses[1.0] - losses[0.0] == pytest.approx(2 * (losses[0.5] - losses[0.0]), rel=1e-4)
    assert batch["is_class"].tolist() == [False, True]
    assert batch["captions"][1] == "dog, picture 0" or batch["captions"][1].startswith("dog")
    # the class images double the batch, not the step count
    assert trainer.progress.total_steps == steps_per_epoch({"any": 6}, 1, 1, 1) * 1


def test_overfitting_a_few_images_makes_the_loss_fall(tmp_path, tiny_models, kohya_dataset):
    data = kohya_dataset(((1, "sks dog", 2),))
    run = make_run(
        tmp_path / "run",
        tiny_models("sdxl"),
        data,
        "sdxl",
        "finetune",
        settings={"cache_latents": True, "cache_text_encoder_outputs": True, "max_grad_norm": 1.0},
        schedule={"epochs": 6, "learning_rate": 2e-3},
    )
    assert train(run) == 0
    losses = [s["loss"] for s in metrics(run, "step")]
    assert len(losses) == 12
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < 0.7 * first, losses


def test_a_failing_sample_is_a_warning_and_training_goes_on(tmp_path, tiny_models, kohya_dataset, capfd):
    data = kohya_dataset(((1, "sks dog", 2),))
    run = make_run(tmp_path / "run", tiny_models("sdxl"), data, "sdxl", "lora", schedule={"max_steps": 2, "sample_every_steps": 1}, prompts=["sks dog --w 64 --h 64 --s 2"])
    (run / "samples").write_text("a file where the samples folder should be")

    assert train(run) == 0

    assert status(run)["state"] == "finished"
    warnings = [m["message"] for m in metrics(run, "event") if m["level"] == "warning"]
    assert any("sampling at step 1 failed" in w for w in warnings) and any("sampling at step 2 failed" in w for w in warnings)
    assert [m["step"] for m in metrics(run, "step")] == [1, 2]
    # visible where the user looks: status.json (dashboard, sdtui status) and train.log (stdout)
    assert status(run)["sample_error"].startswith("sampling at step 2 failed (")
    assert "sdtui-train: warning: sampling at step 2 failed (" in capfd.readouterr().out


def test_dreambooth_generates_missing_class_images_into_the_run_folder(tmp_path, tiny_models, kohya_dataset):
    data = kohya_dataset(((1, "sks dog", 1),))
    before = sorted(p.name for p in data.rglob("*"))
    run = make_run(
        tmp_path / "run",
        tiny_models("sdxl"),
        data,
        "sdxl",
        "dreambooth",
        settings={"class_images_per_instance": 2},
        schedule={"max_steps": 1},
        method_extra={"class_prompt": "a photo of a dog"},
    )
    trainer = set_up(run)
    batch = first_batch(trainer)
    trainer.metrics.close()

    assert len(list((run / "class_images").glob("class_*.png"))) == 2
    assert "2 class images ready" in [m["message"] for m in metrics(run, "event")]
    assert batch["is_class"].tolist() == [False, True] and batch["captions"][1] == "a photo of a dog"
    assert sorted(p.name for p in data.rglob("*")) == before


@pytest.mark.parametrize("generate", [True, False])
def test_the_trainer_generates_the_class_images_the_plan_announces(tmp_path, tiny_models, kohya_dataset, generate):
    from core.config import load_config
    from core.dataset.scan import scan_config
    from core.gpu import parse_spec
    from core.plan.planner import make_plan

    data = kohya_dataset(((1, "sks dog", 2),))
    reg = make_kohya(tmp_path / "reg", ((1, "dog", 1),), (64, 64), True)
    run = make_run(
        tmp_path / "run",
        tiny_models("sd1"),
        data,
        "sd1",
        "dreambooth",
        settings={"class_images_per_instance": 3, "generate_class_images": generate},
        schedule={"max_steps": 1},
        method_extra={"class_prompt": "a dog"},
    )
    add_reg_subset(run, reg / "1_dog")
    config = load_config(run / "run.toml")
    planned = make_plan(config, scan_config(config), parse_spec("1x4090")).to_json()["dataset"]["class_images"]
    assert (planned["given"], planned["to_generate"]) == ((1, 5) if generate else (1, 0))  # 3 × 2 instance images, 1 given

    trainer = set_up(run)
    trainer.metrics.close()

    generated = list((run / "class_images").glob("class_*.png"))
    assert len(generated) == planned["to_generate"]
    assert len(trainer.session.data.train_data.class_items) == planned["given"] + planned["to_generate"]


@pytest.mark.parametrize("targets", ["attn", "attn_ff", "all"])
def test_lora_adapts_exactly_the_modules_the_memory_estimator_counts(tiny_models, targets):
    from core.families.sd_unet import LORA_TARGETS, is_lora_target
    from core.train.model.loading import load_components
    from core.train.model.methods import setup_method

    components = load_components(str(tiny_models("sdxl")))
    plain = {name for name, _ in components.denoiser.named_modules()}
    setup_method("lora", components, {"lora_targets": targets, "lora_rank": 2, "train_text_encoder": True})
    adapted = {name[: -len(".lora_A")] for name, _ in components.denoiser.named_modules() if name.endswith(".lora_A")}
    assert adapted == {n for n in plain if is_lora_target(n, LORA_TARGETS["denoiser"][targets])}
    assert adapted
    encoder = components.text_encoders[0]
    te_adapted = {name[: -len(".lora_A")] for name, _ in encoder.named_modules() if name.endswith(".lora_A")}
    assert te_adapted and all(is_lora_target(n, LORA_TARGETS["text_encoder"][targets]) for n in te_adapted)


def test_placeholder_tokens_never_shrink_the_embedding_table_and_grow_it_when_needed(tiny_models):
    import torch

    from core.train.model.loading import load_components
    from core.train.model.text import add_placeholder_tokens

    components = load_components(str(tiny_models("sd1")))
    encoder, tokenizer = components.text_encoders[0], components.tokenizers[0]
    before = encoder.get_input_embeddings().weight.detach().clone()
    assert len(tokenizer) + 2 < before.shape[0]  # the tiny table is larger than its vocabulary
    (ids,) = add_placeholder_tokens(components, "<shp>", num_vectors=2, init_word="circle")
    table = encoder.get_input_embeddings().weight
    assert table.shape == before.shape
    kept = [i for i in range(before.shape[0]) if i not in ids]
    assert torch.equal(table[kept], before[kept])
    assert max(ids) < table.shape[0]
    many = before.shape[0] - len(tokenizer) + 5
    (more,) = add_placeholder_tokens(components, "<big>", num_vectors=many)
    assert encoder.get_input_embeddings().weight.shape[0] == len(tokenizer) > max(more)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.parametrize(
    "precision",
    ["no", "bf16", pytest.param("fp16", marks=pytest.mark.skipif(not _cuda(), reason="fp16 needs a GPU; the CPU refuses it (test_train_options)"))],
)
def test_samples_render_in_every_mixed_precision(tmp_path, tiny_models, kohya_dataset, precision):
    data = kohya_dataset(((1, "sks dog", 2),))
    prompt = "sks dog --w 64 --h 64 --s 2"
    run = make_run(
        tmp_path / "run",
        tiny_models("sd1"),
        data,
        "sd1",
        "lora",
        settings={"mixed_precision": precision},
        schedule={"max_steps": 2, "sample_every_steps": 2},
        prompts=[prompt],
    )
    assert train(run) == 0
    warnings = [m["message"] for m in metrics(run, "event") if m["level"] in ("warning", "error")]
    assert not [w for w in warnings if "sampling" in w], warnings
    (sample,) = metrics(run, "sample")
    assert (run / sample["path"]).read_bytes()[:4] == b"\x89PNG"
    assert "sample_error" not in status(run)


def test_a_checkpoint_written_with_the_old_unet_keys_still_resumes(tmp_path, tiny_models):
    """Checkpoints written before the denoiser's key was ``denoiser`` name it ``unet.…``; they load into the same weights."""
    import torch

    from core.settings import resolve
    from core.train.model.loading import load_components
    from core.train.model.methods import setup_method
    from core.train.outputs import train_state

    settings = resolve("settings", {"lora_rank": 4, "train_text_encoder": True})
    trained = setup_method("lora", load_components(str(tiny_models("sd1"))), settings)
    saved = trained.trainable_state()
    assert any(k.startswith("denoiser.") for k in saved) and not any(k.startswith("unet.") for k in saved)
    with torch.no_grad():
        for tensor in saved.values():
            tensor.add_(0.5)
    old = {("unet." + k[len("denoiser.") :] if k.startswith("denoiser.") else k): v for k, v in saved.items()}
    train_state.save(tmp_path / "checkpoints", 3, old, {}, {}, keep=2)
    resumed = setup_method("lora", load_components(str(tiny_models("sd1"))), settings)
    resumed.load_trainable_state(train_state.load(tmp_path / "checkpoints" / "step-3").tensors)
    assert all(torch.equal(resumed.trainable_state()[k], saved[k]) for k in saved)
