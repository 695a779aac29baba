"""Block swap under a full fine-tune: the swapped blocks' master weights, gradients and optimizer
state live in host memory and step on the CPU. On the CPU both sides are host memory, so these
tests check the bookkeeping (the hooks, the gradients coming back, the master being what the
optimizer steps, resume) against the same run without swap, bit for bit."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from core.config import load_config
from core.errors import UserError
from tests.test_train_memory import _aligned_loads
from tests.train_helpers import first_batch, make_run, metrics, set_up, train


def _poison_drops(monkeypatch) -> None:
    """Blocks away from the device point at NaNs instead of their host masters, except while the
    optimizer steps (``before_step`` hands it the masters): any forward or backward use of a block
    that is not resident poisons the loss or the weights."""
    from core.train.model.block_swap import BlockSwap

    drop, before_step = BlockSwap.drop, BlockSwap.before_step

    def poisoned(self, index: int) -> None:
        drop(self, index)
        for tensor in self.swapped[index].tensors:
            if tensor.is_floating_point():
                tensor.data = torch.full_like(tensor.data, float("nan"))

    def on_masters(self) -> None:
        before_step(self)
        for block in self.swapped.values():
            for tensor, host in zip(block.tensors, block.host):
                tensor.data = host

    monkeypatch.setattr(BlockSwap, "drop", poisoned)
    monkeypatch.setattr(BlockSwap, "before_step", on_masters)


def _train(trainer, steps: int, accumulation: int) -> list[float]:
    """``steps`` optimizer steps of ``accumulation`` micro-batches each (the first batch each time)."""
    losses = []
    batch = first_batch(trainer)
    for _ in range(steps):
        for micro in range(accumulation):
            losses.append(float(trainer.stepper.micro_step(batch, micro, micro == accumulation - 1, accumulation)))
        trainer.stepper.optimizer_step()
    return losses


def _weights(trainer) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in trainer.session.components.denoiser.named_parameters()}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("family", "count", "settings"),
    [
        ("flux", 2, {"gradient_checkpointing": False}),
        ("flux", 2, {"gradient_checkpointing": True, "optimizer": "adafactor"}),
        ("zimage", 1, {"gradient_checkpointing": True, "ema": True}),
        ("flux", 2, {"gradient_checkpointing": False, "fused_backward_pass": True, "optimizer": "adafactor"}),
    ],
)
def test_a_full_fine_tune_with_swapped_blocks_gives_the_same_losses_and_weights_bit_for_bit(tmp_path, tiny_models, kohya_dataset, monkeypatch, family, count, settings):
    """Swapped blocks (2 of the tiny FLUX.1's 3, 1 of the tiny Z-Image's 2), two micro-batches a step
    (the host gradients sum), three steps: the same losses and the same denoiser as without swap;
    the optimizer stepped the host masters."""
    _aligned_loads(monkeypatch)
    _poison_drops(monkeypatch)
    data = kohya_dataset(((1, "sks dog", 2),))
    settings = {**settings, "max_grad_norm": 0.01}  # a clip that acts: the norm spans both sides
    plain = set_up(make_run(tmp_path / "plain", tiny_models(family), data, family, "finetune", settings=settings))
    expected, weights = _train(plain, 3, 2), _weights(plain)
    swapped = set_up(make_run(tmp_path / "swap", tiny_models(family), data, family, "finetune", settings={**settings, "blocks_to_swap": count}))
    swap = swapped.session.model.swap
    assert swap is not None and swap.count == count and swap.trains
    masters = {id(t): h for b in swap.swapped.values() for t, h in zip(b.tensors, b.host) if t.requires_grad}
    assert len(masters) == len(swap.trained_params()) > 0
    start = [p.detach().clone() for p in swap.trained_params()]
    assert _train(swapped, 3, 2) == expected
    after = _weights(swapped)
    assert after.keys() == weights.keys()
    assert all(torch.equal(after[name], weights[name]) for name in weights), [n for n in weights if not torch.equal(after[n], weights[n])]
    # at rest every swapped parameter is its host master, which the optimizer stepped in place
    assert swap.resident() == []
    assert all(p.data_ptr() == masters[id(p)].data_ptr() and p.grad is None for p in swap.trained_params())
    assert not any(torch.equal(p, before) for p, before in zip(swap.trained_params(), start))


@pytest.mark.slow
def test_a_swapped_parameters_gradient_lands_in_host_memory_and_leaves_the_device(tmp_path, tiny_models, kohya_dataset, monkeypatch):
    """After each micro-batch a swapped parameter has no gradient of its own (the device copy is freed)
    and its host gradient is what the parameter's gradient is without swap: the first micro-batch's,
    then the sum; the optimizer step leaves every swapped block off the device."""
    _aligned_loads(monkeypatch)
    data = kohya_dataset(((1, "sks dog", 2),))
    plain = set_up(make_run(tmp_path / "plain", tiny_models("flux"), data, "flux", "finetune"))
    swapped = set_up(make_run(tmp_path / "swap", tiny_models("flux"), data, "flux", "finetune", settings={"blocks_to_swap": 2}))
    swap = swapped.session.model.swap
    names = {id(p): name for name, p in swapped.session.components.denoiser.named_parameters()}
    reference = dict(plain.session.components.denoiser.named_parameters())
    batch = first_batch(plain)
    for micro in range(2):
        for trainer in (plain, swapped):
            trainer.stepper.micro_step(batch, micro, micro == 1, 2)
        assert swap.grads and all(entry.param.grad is None and entry.arrived for entry in swap.grads)
        assert all(torch.equal(entry.host, reference[names[id(entry.param)]].grad) for entry in swap.grads)
    swapped.stepper.optimizer_step()
    assert swap.resident() == [] and swap.moves[-1] == ("drop", swap.first)
    assert not any(entry.arrived for entry in swap.grads)


@pytest.mark.slow
def test_a_swapped_full_fine_tune_saves_the_same_model_and_resumes_identically(tmp_path, tiny_models, kohya_dataset):
    """The saved denoiser equals the one trained without swap (both drawing samples on the way); a run
    stopped at a checkpoint and resumed continues with the same losses and ends with the same model
    as one that did not stop."""
    data = kohya_dataset(((1, "sks dog", 2),))
    settings = {"gradient_checkpointing": True}
    sampled = {"max_steps": 4, "sample_every_steps": 2}
    prompts = ["sks dog --w 64 --h 64 --s 2 --d 5"]
    plain = make_run(tmp_path / "plain", tiny_models("flux"), data, "flux", "finetune", settings=settings, schedule=sampled, prompts=prompts)
    assert train(plain) == 0
    swapped = {**settings, "blocks_to_swap": 2}
    whole = make_run(tmp_path / "whole", tiny_models("flux"), data, "flux", "finetune", settings=swapped, schedule=sampled, prompts=prompts)
    assert train(whole) == 0
    assert [s["step"] for s in metrics(whole, "sample")] == [2, 4]
    images = [sorted((run / "samples").glob("*.png")) for run in (plain, whole)]
    assert len(images[0]) == 2 and [p.name for p in images[0]] == [p.name for p in images[1]]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(*images))  # the swapped weights sample alike
    halves = make_run(tmp_path / "halves", tiny_models("flux"), data, "flux", "finetune", settings=swapped, schedule={"max_steps": 2, "save_every_steps": 2})
    assert train(halves) == 0
    config = halves / "run.toml"
    config.write_text(config.read_text(encoding="utf-8").replace("max_steps = 2", "max_steps = 4"), encoding="utf-8")
    assert train(halves) == 0
    losses = [s["loss"] for s in metrics(plain, "step")]
    assert [s["loss"] for s in metrics(whole, "step")] == losses
    assert [s["loss"] for s in metrics(halves, "step")][-2:] == losses[-2:]
    events = " ".join(e.get("message", "") for e in metrics(whole, "event"))
    assert "with their gradients; the optimizer steps them there" in events
    saved = [_denoiser_file(run) for run in (plain, whole, halves)]
    assert saved[0].keys() == saved[1].keys() == saved[2].keys()
    assert all(torch.equal(saved[0][k], other[k]) for other in saved[1:] for k in saved[0])


def _denoiser_file(run) -> dict[str, torch.Tensor]:
    files = sorted((run / "output" / "diffusers" / "transformer").glob("*.safetensors"))
    assert files, list((run / "output").rglob("*"))
    out: dict[str, torch.Tensor] = {}
    for file in files:
        out.update(load_file(str(file)))
    return out


@pytest.mark.parametrize(
    ("settings", "backend", "processes", "message"),
    [
        ({"blocks_to_swap": 2}, "deepspeed", 1, "where DeepSpeed cannot reach them"),
        ({"blocks_to_swap": 2}, "ddp", 2, "before DDP could average them across the 2 processes; set blocks_to_swap to 0 or train on one GPU"),
    ],
)
def test_a_swapped_full_fine_tune_refuses_what_cannot_work_in_one_sentence(tmp_path, tiny_models, kohya_dataset, settings, backend, processes, message):
    run = make_run(tmp_path / "run", tiny_models("sd1"), kohya_dataset(), "sd1", "finetune", settings=settings, processes=processes)
    text = (run / "run.toml").read_text(encoding="utf-8").replace(f"[distributed]\nnum_processes = {processes}", f'[distributed]\nnum_processes = {processes}\nbackend = "{backend}"')
    (run / "run.toml").write_text(text, encoding="utf-8")
    with pytest.raises(UserError) as caught:
        load_config(run / "run.toml")
    assert message in str(caught.value) and "\n" not in str(caught.value) and str(caught.value).count(". ") == 0


@pytest.mark.parametrize("optimizer", ["adamw", "adamw8bit", "adafactor", "prodigy", "schedulefree_adamw"])
def test_a_full_fine_tune_with_block_swap_is_allowed_with_every_optimizer(tmp_path, tiny_models, kohya_dataset, optimizer):
    """Every optimizer steps on the CPU (bitsandbytes' 8-bit ones too, since 0.49), so none is refused."""
    for method in ("finetune", "dreambooth"):
        run = make_run(tmp_path / method, tiny_models("sd1"), kohya_dataset(), "sd1", method, settings={"blocks_to_swap": 3, "optimizer": optimizer, "fused_backward_pass": True})
        assert load_config(run / "run.toml").settings["blocks_to_swap"] == 3


@pytest.mark.slow
def test_a_swapped_full_fine_tune_launched_on_two_processes_stops_with_the_sentence(tmp_path, tiny_models, kohya_dataset):
    """run.toml asks for one process but accelerate starts two: the trainer counts the processes it has."""
    from tests.train_helpers import launch, status

    run = make_run(tmp_path / "run", tiny_models("sd1"), kohya_dataset(), "sd1", "finetune", settings={"blocks_to_swap": 3})
    done = launch(run, processes=2)
    assert done.returncode != 0
    assert "before DDP could average them across the 2 processes" in (status(run).get("error") or ""), done.stderr[-2000:]
