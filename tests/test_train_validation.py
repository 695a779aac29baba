"""The validation loss: a deterministic held-out split, a flat curve for a frozen model, DDP equal to one process."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomlkit

from core.plan.schedule import held_out, validation_steps
from tests.train_helpers import launch, make_run, metrics, train


def with_validation(run: Path, **section: object) -> Path:
    doc = tomlkit.parse((run / "run.toml").read_text(encoding="utf-8"))
    doc["validation"] = section
    (run / "run.toml").write_text(tomlkit.dumps(doc), encoding="utf-8")
    return run


def test_the_split_is_deterministic_disjoint_and_leaves_images_to_train() -> None:
    paths = [f"/data/10_dog/img{i:02d}.png" for i in range(40)]

    first = held_out(paths, 0.1)

    assert len(first) == 4
    assert first == held_out(list(reversed(paths)), 0.1)  # the order of the scan does not matter
    assert {p.replace("/data/", "/mnt/x/") for p in first} == held_out([p.replace("/data/", "/mnt/x/") for p in paths], 0.1)
    assert held_out(paths[:1], 0.3) == set()  # a single image always trains
    assert len(held_out(paths[:2], 0.49)) == 1
    assert held_out(paths, 0.0) == set()
    assert validation_steps(10, 4) == [4, 8]


def test_held_out_images_never_train_and_the_frozen_curve_is_flat(tmp_path, tiny_models, kohya_dataset) -> None:
    from core.config import load_config
    from core.train.data.items import build_items

    data = kohya_dataset(((1, "sks dog", 8),))
    run = make_run(tmp_path / "run", tiny_models("sd1"), data, schedule={"max_steps": 6, "learning_rate": 0.0})
    with_validation(run, split=0.25, every_n_steps=2)
    config = load_config(run / "run.toml")
    items = build_items(config, config.settings)
    trained = {i.path for i in items.items}
    held = {i.path for i in items.validation_items}
    assert len(held) == 2 and not trained & held and len(trained) == 6
    assert items.items_per_epoch == 6

    assert train(run) == 0

    records = metrics(run, "validation")
    assert [r["step"] for r in records] == [2, 4, 6]
    assert len({r["loss"] for r in records}) == 1  # fixed timesteps and noise: only the model moves the curve
    assert records[0]["loss"] > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("validation/loss")] == [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in records]


@pytest.mark.slow
@pytest.mark.xdist_group("ddp")
def test_two_processes_give_the_validation_loss_of_one(tmp_path, tiny_models, kohya_dataset) -> None:
    data = kohya_dataset(((1, "sks dog", 7),))
    values = []
    for processes in (1, 2):
        run = make_run(tmp_path / f"run{processes}", tiny_models("sd1"), data, schedule={"max_steps": 1, "learning_rate": 0.0}, processes=processes)
        with_validation(run, split=0.45, every_n_steps=1)
        done = launch(run, processes)
        assert done.returncode == 0, done.stderr[-3000:]
        values.append([r["loss"] for r in metrics(run, "validation")])
    assert len(values[0]) == len(values[1]) == 1
    # each image's loss is gathered and averaged in image order, so the process count does not enter the
    # sum; what is left is float32 rounding of the CPU kernels (it varies with the buffers' memory
    # alignment, seen as 1 ulp in one image's loss): equal to 1e-6 relative
    assert values[1][0] == pytest.approx(values[0][0], rel=1e-6, abs=0)


def test_the_mean_is_taken_in_image_order_whatever_the_process_count(monkeypatch) -> None:
    """Each rank's share (padded to the same count) is gathered and averaged per image: 1, 2 or 3 processes give the same float."""
    from types import SimpleNamespace

    import torch

    from core.train.validation import Validator

    items = [SimpleNamespace(path=f"/d/1_x/{i}.png") for i in range(5)]
    monkeypatch.setattr(Validator, "item_loss", lambda self, index: 1 / (index + 3) + 1e-9 * index**3)

    def mean(world: int) -> float:
        def session(rank: int, acc: object) -> SimpleNamespace:
            return SimpleNamespace(
                rank=rank,
                world=world,
                device=torch.device("cpu"),
                acc=acc,
                data=SimpleNamespace(train_data=SimpleNamespace(validation_items=items)),
                denoiser=torch.nn.Identity,
                text_encoders=list,
            )

        shares = []
        for rank in range(world):
            validator = Validator(session(rank, None), None, 1, 0)
            shares.append(torch.tensor([validator.item_loss(i) for i in validator.mine], dtype=torch.float64))
        values = []
        for rank in range(world):
            validator = Validator(session(rank, SimpleNamespace(gather=lambda _mine: torch.cat(shares))), None, 1, 0)
            validator.prepared = {i: {} for i in range(len(items))}
            values.append(validator.loss())
        assert len(set(values)) == 1  # every rank gets the same value
        return values[0]

    assert mean(1) == mean(2) == mean(3)


def test_the_validation_loss_reaches_every_tracker_wandb_too(tmp_path) -> None:
    """accelerate hands ``validation/loss`` to each tracker of ``log_with``: a recording one stands in
    for W&B (not installed here) beside TensorBoard."""
    from accelerate import Accelerator
    from accelerate.tracking import GeneralTracker, on_main_process

    from core.train import trackers

    class Recording(GeneralTracker):
        name, requires_logging_directory = "wandb-like", False

        def __init__(self) -> None:
            super().__init__()
            self.logged: list[tuple[dict, int]] = []

        @property
        def tracker(self):  # type: ignore[no-untyped-def]
            return self

        @on_main_process
        def log(self, values: dict, step: int | None = None, **kwargs: object) -> None:
            self.logged.append((dict(values), int(step or 0)))

    recording = Recording()
    acc = Accelerator(log_with=[*trackers.log_with({"tensorboard": True}, tmp_path), recording], cpu=True)
    trackers.start(acc, {}, "run")
    trackers.log_validation(acc, 40, 0.25)
    acc.end_training()
    assert recording.logged == [({"validation/loss": 0.25}, 40)]
