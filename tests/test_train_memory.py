"""The memory techniques in the trainer: a quantized base (fp8, fp8_scaled, int8, nf4) under a LoRA,
block swap (the same losses bit for bit, the order of the moves), and their refusals."""

from __future__ import annotations

import math

import pytest
import torch

from core.config import load_config
from core.errors import UserError
from core.families import runtime, spec
from core.train.model.loading import load_components
from tests.train_helpers import first_batch, make_run, metrics, set_up, status, train

QUANTIZED = ["fp8", "fp8_scaled", "int8", "nf4"]


def _trains_and_loads_on_the_plain_base(tmp_path, tiny_models, kohya_dataset, family: str, settings: dict, count: int) -> None:
    """The losses are finite and fall, and the saved diffusers LoRA, loaded on the unquantized tiny
    model in bf16 (diffusers' ``load_lora_weights``), changes what its denoiser predicts."""
    from diffusers import DiffusionPipeline
    from safetensors.torch import load_file

    data = kohya_dataset(((1, "sks dog", 2),))
    run = make_run(tmp_path / "run", tiny_models(family), data, family, "lora", settings={"cache_latents": True, **settings}, schedule={"epochs": 8, "learning_rate": 5e-3})
    assert train(run) == 0
    losses = [s["loss"] for s in metrics(run, "step")]
    assert len(losses) == 16 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-4:]) < sum(losses[:4]), losses
    events = " ".join(e.get("message", "") for e in metrics(run, "event"))
    denoiser = spec(family).denoiser
    assert f"{denoiser}: {count} linear layers stored in {settings['base_precision']}" in events, events
    lora = load_file(str(run / "output" / "diffusers" / "pytorch_lora_weights.safetensors"))
    assert lora and all(t.dtype in (torch.float16, torch.float32, torch.bfloat16) for t in lora.values())
    pipe = DiffusionPipeline.from_pretrained(str(tiny_models(family)), torch_dtype=torch.bfloat16)
    model = getattr(pipe, denoiser)
    inputs = runtime(family).dummy_inputs(dict(model.config), 1, 64, torch.bfloat16, torch.device("cpu"))
    with torch.no_grad():
        before = model(**inputs).sample
        pipe.load_lora_weights(str(run / "output" / "diffusers"), weight_name="pytorch_lora_weights.safetensors")
        after = model(**inputs).sample
    assert not torch.allclose(before, after)


@pytest.mark.slow
@pytest.mark.parametrize(("family", "count"), [("sd1", 40), ("sdxl", 88)])
@pytest.mark.parametrize("precision", QUANTIZED)
def test_a_lora_trains_on_a_quantized_base_and_loads_on_the_unquantized_one(tmp_path, tiny_models, kohya_dataset, family, count, precision):
    settings = {"base_precision": precision, "text_encoder_precision": precision, "lora_targets": "attn_ff"}
    _trains_and_loads_on_the_plain_base(tmp_path, tiny_models, kohya_dataset, family, settings, count)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp8", "int8", "nf4"])
def test_flux_trains_a_lora_on_a_quantized_base_with_swapped_blocks(tmp_path, tiny_models, kohya_dataset, precision):
    """The techniques together on the tiny FLUX.1: a quantized transformer and T5, 2 of its 3 blocks swapped, checkpointing."""
    settings = {"base_precision": precision, "text_encoder_precision": "int8", "blocks_to_swap": 2, "gradient_checkpointing": True, "lora_targets": "attn_ff"}
    _trains_and_loads_on_the_plain_base(tmp_path, tiny_models, kohya_dataset, "flux", settings, 22)


@pytest.mark.parametrize("family", ["sdxl", "sd35", "zimage", "flux2", "qwenimage"])
@pytest.mark.parametrize("precision", QUANTIZED)
def test_quantizing_keeps_the_specs_modules_and_shrinks_the_rest(tiny_models, family, precision):
    from core.train.model.quantize import quantizable, quantize, quantized_bytes

    found = spec(family)
    unet = load_components(str(tiny_models(family))).denoiser
    keep = lambda name: found.keeps_precision(found.denoiser, name)  # noqa: E731
    kept = [name for name, m in unet.named_modules() if type(m) is torch.nn.Linear and keep(name)]
    before, names = quantized_bytes(unet), quantizable(unet, keep)
    assert kept and names and not set(kept) & set(names)
    weights = sum(unet.get_submodule(name).weight.nbytes for name in names)
    assert quantize(unet, precision, keep, torch.device("cpu")) == len(names)
    assert quantized_bytes(unet) < before - weights / 2  # 4 fp32 bytes a weight become 1 (fp8, int8) or 1/2 (nf4), plus scales
    assert all(type(unet.get_submodule(name)) is torch.nn.Linear and unet.get_submodule(name).weight.dtype == torch.float32 for name in kept)
    assert all(type(unet.get_submodule(name)) is not torch.nn.Linear or type(unet.get_submodule(name).weight) is not torch.nn.Parameter for name in names)


def test_fp8_storage_is_one_byte_a_weight_and_saves_no_upcast_copy_for_backward() -> None:
    from core.train.model.quantize import Float8StorageLinear

    torch.manual_seed(0)
    linear = torch.nn.Linear(16, 8)
    fp8 = Float8StorageLinear.from_linear(linear)
    assert fp8.weight.dtype == torch.uint8 and fp8.weight.element_size() == 1 and not fp8.weight.requires_grad
    x = torch.randn(4, 16, requires_grad=True)
    reference = torch.nn.functional.linear(x, linear.weight.detach().to(torch.float8_e4m3fn).float(), linear.bias.detach())
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = fp8(x)
    assert torch.equal(y, reference)
    assert [t.dtype for t in saved] == [torch.uint8]  # the 1-byte weight, not a float32 copy of it
    y.sum().backward()
    assert torch.allclose(x.grad, linear.weight.detach().to(torch.float8_e4m3fn).float().sum(0).expand(4, 16))
    fp8.to(torch.bfloat16)  # a dtype cast leaves the stored bytes alone
    assert fp8.weight.dtype == torch.uint8


# block swap


def test_a_torchao_weight_is_streamed_by_its_plain_parts() -> None:
    """CUDA stream bookkeeping and pinning act on plain tensors: a torchao weight gives its data and scales."""
    from torchao.quantization import Int8WeightOnlyConfig, PerRow, quantize_

    from core.train.model.block_swap import _host_copy, _plain_parts

    layer = torch.nn.Sequential(torch.nn.Linear(16, 8))
    quantize_(layer, Int8WeightOnlyConfig(granularity=PerRow()))
    parts = _plain_parts(layer[0].weight)
    assert len(parts) >= 2 and all(type(p) is torch.Tensor for p in parts)
    assert {p.dtype for p in parts} >= {torch.int8}
    assert _plain_parts(layer[0].bias) == [layer[0].bias]
    assert type(_host_copy(layer[0].weight, pin=True)) is type(layer[0].weight.data)  # a subclass stays pageable, not broken


def _poison_drops(monkeypatch) -> None:
    """Dropped blocks point at NaNs instead of their host copy: any use of a block that is not resident poisons the loss."""
    from core.train.model.block_swap import BlockSwap

    drop = BlockSwap.drop

    def poisoned(self, index: int) -> None:
        drop(self, index)
        for tensor in self.swapped[index].tensors:
            if tensor.is_floating_point():
                tensor.data = torch.full_like(tensor.data, float("nan"))

    monkeypatch.setattr(BlockSwap, "drop", poisoned)


def _aligned_loads(monkeypatch) -> None:
    """Load every weight into fresh memory instead of the memory-mapped file: a CPU kernel may round
    differently at another alignment, and the swapped blocks always run on fresh copies."""
    from core.train.model import loading

    load = loading.load_components

    def aligned(*args, **kwargs):
        components = load(*args, **kwargs)
        for module in (components.denoiser, components.vae, *components.text_encoders):
            for tensor in (*module.parameters(), *module.buffers()):
                tensor.data = tensor.data.clone()
        return components

    monkeypatch.setattr(loading, "load_components", aligned)


def _steps(trainer, count: int) -> list[float]:
    losses = []
    for _ in range(count):
        losses.append(float(trainer.stepper.micro_step(first_batch(trainer), 0, True, 1)))
        trainer.stepper.optimizer_step()
    return losses


@pytest.mark.slow
@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize(("family", "swap"), [("sd1", 3), ("sdxl", 2), ("flux", 2), ("chroma", 2), ("flux2", 2), ("sd35", 1), ("zimage", 1), ("qwenimage", 1)])
def test_block_swap_gives_the_same_losses_bit_for_bit(tmp_path, tiny_models, kohya_dataset, monkeypatch, family, swap, checkpointing):
    """With and without gradient checkpointing; a dropped block's tensors hold NaNs, so a block used
    when it is not resident would show in the loss. The moves follow the forward and backward order."""
    _poison_drops(monkeypatch)
    _aligned_loads(monkeypatch)
    data = kohya_dataset(((1, "sks dog", 2),))
    settings = {"gradient_checkpointing": checkpointing, "lora_targets": "all"}
    plain = set_up(make_run(tmp_path / "plain", tiny_models(family), data, family, "lora", settings=settings))
    expected = _steps(plain, 3)
    swapped = set_up(make_run(tmp_path / "swap", tiny_models(family), data, family, "lora", settings={**settings, "blocks_to_swap": swap}))
    block_swap = swapped.session.model.swap
    assert block_swap is not None and block_swap.count == swap
    assert _steps(swapped, 3) == expected
    blocks = len(block_swap.modules)
    first = blocks - swap
    # host copies only: every swapped block's frozen tensors live in host memory, the LoRA weights never move
    trained = {id(p) for p in swapped.session.method.parameters()}
    assert all(id(t) not in trained for b in block_swap.swapped.values() for t in b.tensors)
    # forward: each swapped block is prefetched during the one before, used, then dropped (the last
    # one stays for backward); backward: each is used again from the last down, prefetched one ahead;
    # the next forward finds the first swapped block still there and starts with the second (a lone
    # swapped block is loaded once and stays)
    forward = [("load", first)] + [m for i in range(first, blocks) for m in (("use", i), ("load", i + 1), ("drop", i))][:-2]
    backward = [m for i in range(blocks - 1, first, -1) for m in (("load", i - 1), ("drop", i), ("use", i - 1))]
    moves = block_swap.moves
    after = [("load", first + 1)] if swap > 1 else []
    assert moves[: len(forward) + len(backward) + 1] == forward + backward + after, moves
    assert block_swap.resident() == [first]


@pytest.mark.slow
def test_a_block_swapped_run_samples_and_resumes(tmp_path, tiny_models, kohya_dataset):
    """Sampling keeps the swapped blocks in host memory; a resumed run continues with the same losses as one that did not stop."""
    data = kohya_dataset(((1, "sks dog", 2),))
    settings = {"blocks_to_swap": 2, "gradient_checkpointing": True}
    prompt = "sks dog --w 64 --h 64 --s 2 --d 5"
    whole = make_run(tmp_path / "whole", tiny_models("sd1"), data, settings=settings, schedule={"max_steps": 4, "sample_every_steps": 2}, prompts=[prompt])
    assert train(whole) == 0
    assert [s["step"] for s in metrics(whole, "sample")] == [2, 4]
    halves = make_run(tmp_path / "halves", tiny_models("sd1"), data, settings=settings, schedule={"max_steps": 2, "save_every_steps": 2})
    assert train(halves) == 0
    config = halves / "run.toml"
    config.write_text(config.read_text(encoding="utf-8").replace("max_steps = 2", "max_steps = 4"), encoding="utf-8")
    assert train(halves) == 0
    assert [s["loss"] for s in metrics(halves, "step")][-2:] == [s["loss"] for s in metrics(whole, "step")][-2:]


# refusals


@pytest.mark.parametrize(
    ("method", "settings", "backend", "message"),
    [
        ("finetune", {"base_precision": "int8"}, "ddp", 'base_precision = "int8" quantizes the denoiser, which a finetune trains whole'),
        ("dreambooth", {"text_encoder_precision": "nf4", "train_text_encoder": True}, "ddp", 'text_encoder_precision = "nf4" quantizes the text encoders'),
        ("lora", {"blocks_to_swap": 2, "torch_compile": True}, "ddp", "which torch_compile cannot trace"),
        ("lora", {"blocks_to_swap": 2}, "fsdp", 'backend = "fsdp" both place the weights'),
        ("lora", {"base_precision": "fp16", "mixed_precision": "bf16"}, "ddp", 'set base_precision to "auto" or mixed_precision to "fp16"'),
        ("lora", {"blocks_to_swap": 8}, "ddp", "the sd1 denoiser has 8 blocks and at least one must stay on the GPU; set blocks_to_swap to 7 or less"),
    ],
)
def test_a_technique_that_cannot_work_is_refused_in_one_sentence(tmp_path, tiny_models, kohya_dataset, method, settings, backend, message):
    run = make_run(tmp_path / "run", tiny_models("sd1"), kohya_dataset(), "sd1", method, settings=settings)
    text = (run / "run.toml").read_text(encoding="utf-8").replace("[distributed]\nnum_processes = 1", f'[distributed]\nnum_processes = 1\nbackend = "{backend}"')
    (run / "run.toml").write_text(text, encoding="utf-8")
    with pytest.raises(UserError) as caught:
        load_config(run / "run.toml")
    assert message in str(caught.value) and "\n" not in str(caught.value) and str(caught.value).count(". ") == 0


@pytest.mark.slow
def test_swapping_every_block_of_a_small_model_is_refused_in_one_sentence(tmp_path, tiny_models, kohya_dataset):
    """The config check counts the family's reference size (57 FLUX blocks); the tiny FLUX model has 3."""
    run = make_run(tmp_path / "run", tiny_models("flux"), kohya_dataset(), "flux", "lora", settings={"blocks_to_swap": 3})
    assert train(run) == 1  # the run failed at start-up, its status says why
    assert "this model's denoiser has 3 blocks and at least one must stay on the GPU; set blocks_to_swap to 2 or less" in (status(run).get("error") or "")


def test_a_lora_on_a_quantized_base_and_block_swap_are_allowed(tmp_path, tiny_models, kohya_dataset):
    run = make_run(tmp_path / "run", tiny_models("sd1"), kohya_dataset(), "sd1", "lora", settings={"base_precision": "nf4", "blocks_to_swap": 7})
    assert load_config(run / "run.toml").settings["blocks_to_swap"] == 7
