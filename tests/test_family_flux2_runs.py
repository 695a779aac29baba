"""FLUX.2 klein runs through the trainer: a stopped LoRA run resumes with the losses of an uninterrupted one,
and two DDP processes (gloo, CPU) end with the same weights."""

from __future__ import annotations

import pytest

from tests.test_train_resume import stop_after
from tests.train_helpers import launch, make_run, metrics, status, train, weight_hashes

pytestmark = pytest.mark.slow

SCHEDULE = {"epochs": 2, "save_every_epochs": 0, "lr_scheduler": "cosine", "lr_warmup_steps": 1, "learning_rate": 1e-2}


def test_a_stopped_klein_lora_run_resumes_with_the_losses_of_an_uninterrupted_one(tmp_path, tiny_models, kohya_dataset) -> None:
    data = kohya_dataset(((1, "sks dog", 3),))
    model = tiny_models("flux2")
    settings = {"lora_targets": "attn_ff"}
    whole = make_run(tmp_path / "whole", model, data, "flux2", "lora", settings=settings, schedule=SCHEDULE)
    assert train(whole) == 0
    reference = {m["step"]: m["loss"] for m in metrics(whole, "step")}
    assert sorted(reference) == list(range(1, 7))

    run = make_run(tmp_path / "run", model, data, "flux2", "lora", settings=settings, schedule=SCHEDULE)
    watcher = stop_after(run, 2)
    assert train(run) == 0
    watcher.join()
    stopped = status(run)
    assert stopped["state"] == "stopped" and 2 <= stopped["step"] < 6
    assert train(run) == 0
    final = status(run)
    assert (final["state"], final["step"]) == ("finished", 6)
    resumed = {m["step"]: m["loss"] for m in metrics(run, "step")}
    assert sorted(resumed) == list(range(1, 7))
    assert resumed == pytest.approx(reference, rel=1e-4)
    assert any(f"resumed from step-{stopped['step']}" in m["message"] for m in metrics(run, "event"))


@pytest.mark.xdist_group("ddp")
def test_two_processes_train_klein_to_the_same_weights(tmp_path, tiny_models, kohya_dataset) -> None:
    run = make_run(
        tmp_path / "run",
        tiny_models("flux2"),
        kohya_dataset(((1, "sks dog", 4),)),
        "flux2",
        "lora",
        settings={"lora_targets": "all"},
        schedule={"max_steps": 2},
        processes=2,
    )
    hashes = tmp_path / "hashes.txt"
    done = launch(run, 2, args=["--weights-hash", str(hashes)], timeout=420)
    assert done.returncode == 0, done.stderr[-3000:]
    assert status(run)["state"] == "finished" and [m["step"] for m in metrics(run, "step")] == [1, 2]
    final = weight_hashes(hashes, 2)
    assert sorted(rank for rank, _ in final) == ["0", "1"] and len({digest for _, digest in final}) == 1
