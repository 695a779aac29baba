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
    return {n: p.detach().clone() for n, p in trainer.method.named_trainable().items()}


def _changed(before, trainer):
    import torch

    return any(not torch.equal(before[n], p.detach()) for n, p in trainer.method.named_trainable().items())


def test_prodigy_learns_at_its_rule_and_reports_d_times_lr(setup_run):
    trainer = setup_run({"optimizer": "prodigy"}, {"learning_rate": 1.0})
    assert type(trainer.optimizer.optimizer).__name__ == "Prodigy"
    before = _snapshot(trainer)
    one_step(trainer)
    assert _changed(before, trainer)
    group = trainer.optimizer.param_groups[0]
    assert trainer._current_lr() == pytest.approx(group["d"] * group["lr"])
    assert not any("prodigy multiplies" in m["message"] for m in metrics(trainer.run.path, "event"))


def test_prodigy_at_an_adamw_rate_is_warned_about(setup_run):
    trainer = setup_run({"optimizer": "prodigy"}, {"learning_rate": 1e-4})
    assert any("prodigy multiplies its own step-size estimate" in m["message"] for m in metrics(trainer.run.path, "event"))


def test_schedulefree_warms_up_itself_and_samples_and_saves_its_averaged_weights(setup_run):
    import torch

    trainer = setup_run({"optimizer": "schedulefree_adamw"}, {"lr_warmup_steps": 4, "lr_scheduler": "cosine", "epochs": 4})
    inner = trainer.optimizer.optimizer
    assert type(inner).__name__ == "AdamWScheduleFree"
    assert any("keeps its own schedule" in m["message"] for m in metrics(trainer.run.path, "event"))
    assert trainer._current_lr() == pytest.approx(1e-3 / 4)  # first step of its own 4-step warm-up
    one_step(trainer)
    one_step(trainer)
    assert inner.param_groups[0]["train_mode"]
    training_point = _snapshot(trainer)
    seen = {}

    def fake_render(*args, **kwargs):
        seen["train_mode"] = inner.param_groups[0]["train_mode"]
        seen["weights"] = _snapshot(trainer)
        return []

    import core.train.sampling as sampling

    original, sampling.render_samples = sampling.render_samples, fake_render
    try:
        trainer.config.set_prompts(["a dog"])
        trainer.sample()
    finally:
        sampling.render_samples = original
    assert seen["train_mode"] is False
    assert any(not torch.equal(seen["weights"][n], training_point[n]) for n in training_point)  # eval weights differ
    assert inner.param_groups[0]["train_mode"]  # back to training afterwards
    assert all(torch.allclose(training_point[n], p.detach(), atol=1e-6) for n, p in trainer.method.named_trainable().items())


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
    assert trainer.total_steps == 12
    rates = []
    for _ in range(12):
        rates.append(trainer._current_lr())
        trainer.lr_scheduler.step()
    assert rates == pytest.approx([1e-3 * expected(t) for t in range(12)], rel=1e-6)
    if scheduler == "cosine_with_restarts":
        assert rates[4] == pytest.approx(1e-3) and rates[8] == pytest.approx(1e-3)
