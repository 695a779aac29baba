"""Bad input and training failures end as ``failed`` with one sentence and a hint in status.json."""

from __future__ import annotations

import pytest

from tests.train_helpers import make_run, metrics, set_up, status, train

pytestmark = pytest.mark.slow


def failed(run_dir) -> dict:
    state = status(run_dir)
    assert state["state"] == "failed"
    assert "Traceback" not in state["error"] and state["error"].count("\n") == 0
    return state


def test_a_missing_model_names_the_path_and_the_fix(tmp_path, kohya_dataset):
    run = make_run(tmp_path / "run", tmp_path / "no-such-model", kohya_dataset())
    assert train(run) == 1
    state = failed(run)
    assert str(tmp_path / "no-such-model") in state["error"] and "model.path" in state["error"]
    assert "model.path" in state["hint"]
    assert metrics(run, "event")[-1]["level"] == "error"


def test_an_unloadable_checkpoint_names_the_folder(tmp_path, tiny_models, kohya_dataset):
    run = make_run(tmp_path / "run", tiny_models("sdxl"), kohya_dataset(), "sdxl")
    broken = run / "checkpoints" / "step-3"
    broken.mkdir(parents=True)
    (broken / "state.json").write_text('{"step": 3}')
    (broken / "trainable.safetensors").write_bytes(b"not a safetensors file")
    assert train(run) == 1
    state = failed(run)
    assert str(broken) in state["error"] and "delete that folder" in state["error"]


def test_an_empty_dataset_fails_with_its_fix(tmp_path, tiny_models):
    empty = tmp_path / "data" / "5_sks dog"
    empty.mkdir(parents=True)
    (empty / "notes.txt").write_text("no images here")
    run = make_run(tmp_path / "run", tiny_models("sdxl"), tmp_path / "data", "sdxl")
    assert train(run) == 1
    assert "no usable image" in failed(run)["error"]


def test_a_diverging_loss_fails_with_a_learning_rate_hint(tmp_path, tiny_models, kohya_dataset):
    run = make_run(tmp_path / "run", tiny_models("sdxl"), kohya_dataset(), "sdxl", schedule={"learning_rate": 1e30, "max_steps": 5}, settings={"max_grad_norm": 0.0})
    assert train(run) == 1
    state = failed(run)
    assert "the loss became" in state["error"] and "at step" in state["error"]
    assert "learning_rate" in state["hint"]
    assert state["step"] < 5


def test_an_image_that_breaks_during_training_is_skipped_with_a_warning(tmp_path, tiny_models, kohya_dataset):
    data = kohya_dataset(((1, "sks dog", 2),))
    image = data / "1_sks dog" / "img000.png"
    run = make_run(tmp_path / "run", tiny_models("sdxl"), data, "sdxl", schedule={"epochs": 2})
    trainer = set_up(run)
    image.write_bytes(image.read_bytes()[:60])  # scanned fine, then damaged: the header survives, the pixels do not

    assert trainer.train() == "finished"
    trainer.metrics.close()

    warnings = [m["message"] for m in metrics(run, "event") if m["level"] == "warning"]
    assert any("img000.png" in w for w in warnings)
    assert [m["step"] for m in metrics(run, "step")] == [1, 2, 3, 4]


def test_out_of_memory_suggests_what_fits(tmp_path, kohya_dataset):
    import torch

    from core.train.loop import Trainer, _describe_failure
    from core.train.startup import read_config

    settings = {"gradient_checkpointing": False, "optimizer": "adamw", "batch_size": 4, "resolution": 1024, "max_bucket_reso": 1024, "cache_latents": True}
    run = make_run(tmp_path / "run", tmp_path / "no-model", kohya_dataset(), "sdxl", "lora", settings=settings)
    trainer = Trainer(run)
    trainer.config = read_config(trainer.run)  # out of memory while loading: the session is not built yet
    trainer.progress.step = 6
    error, hint = _describe_failure(trainer, torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert error == "out of memory at step 7"
    assert "step 7" in hint and ("recipe" in hint or "gradient_checkpointing=true" in hint)


def test_a_missing_run_toml_is_a_clear_failure(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert train(run) == 1
    assert "run.toml does not exist" in failed(run)["error"]


def test_a_checkpoint_from_other_settings_is_refused(tmp_path, tiny_models, kohya_dataset):
    data = kohya_dataset(((1, "sks dog", 2),))
    run = make_run(tmp_path / "run", tiny_models("sdxl"), data, "sdxl", settings={"lora_rank": 4}, schedule={"max_steps": 1})
    assert train(run) == 0
    make_run(tmp_path / "run", tiny_models("sdxl"), data, "sdxl", settings={"lora_rank": 8}, schedule={"max_steps": 2})
    assert train(run) == 1
    assert "does not match this run's method and settings" in failed(run)["error"]


def test_the_entry_point_wants_exactly_one_run_folder(capsys):
    from core.train.__main__ import run

    assert run([]) == 2
    assert "usage: python -m core.train RUN_DIR" in capsys.readouterr().err


def test_images_the_scan_leaves_out_are_warning_events_of_the_run(tmp_path, tiny_models, kohya_dataset):
    data = kohya_dataset()
    broken = next(data.iterdir()) / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    run = make_run(tmp_path / "run", tiny_models("sd1"), data, schedule={"epochs": 0, "max_steps": 1})
    assert train(run) == 0
    warnings = [e["message"] for e in metrics(run, "event") if e["level"] == "warning"]
    assert [m for m in warnings if str(broken) in m and m.startswith("skipping image")]


def test_the_entry_point_takes_the_attempt_and_the_weights_hash_file_and_refuses_other_options(capsys):
    from core.train.__main__ import parse, run

    assert parse(["RUN", "--weights-hash", "h.txt", "--attempt", "a1"]) == ("RUN", {"--weights-hash": "h.txt", "--attempt": "a1"})
    assert parse(["RUN"]) == ("RUN", {})
    for argv in (["RUN", "--attempt"], ["RUN", "--hash", "h.txt"], ["RUN", "--attempt", "a", "--attempt", "b"], ["--attempt", "a", "RUN"]):
        assert parse(argv) is None
        assert run(argv) == 2
        assert "usage: python -m core.train RUN_DIR [--attempt ID] [--weights-hash FILE]" in capsys.readouterr().err
