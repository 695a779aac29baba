"""Start-up phases: progress in status.json, metrics.jsonl and train.log; the latent cache reused and sharded."""

from __future__ import annotations

import io
import math

import pytest
import tomlkit

from core.train.phases import Phases, progress_text
from tests.train_helpers import launch, make_run, metrics, status, train

pytestmark = pytest.mark.slow


class _Status:
    def __init__(self) -> None:
        self.updates: list[dict] = []

    def update(self, **fields) -> None:
        self.updates.append(fields)


class _Metrics:
    def __init__(self) -> None:
        self.lines: list[dict] = []

    def write(self, kind: str, **fields) -> None:
        self.lines.append({"type": kind, **fields})


def test_a_phase_reports_progress_and_time_left_at_most_once_a_second():
    clock = iter([0.0, 0.4, 1.2, 6.0, 10.0]).__next__
    out = io.StringIO()
    phases = Phases(_Status(), _Metrics(), clock=clock, out=out)
    phases.start("cache_latents", 1000, "images")
    phases.advance(40)  # 0.4 s: no update due yet
    phases.advance(120)  # 1.2 s: status.json gets the count and the time left
    phases.advance(500)  # 6 s: also metrics.jsonl and train.log
    phases.end(1000)
    first, second, cleared = phases.status.updates[0]["phase"], phases.status.updates[1]["phase"], phases.status.updates[-1]
    assert (first["done"], first["total"], first["eta_s"]) == (0, 1000, None)
    assert (second["done"], second["label"]) == (120, "caching latents") and second["eta_s"] == pytest.approx(1.2 / 120 * 880, abs=0.1)
    assert cleared == {"phase": None} and [u["phase"]["done"] for u in phases.status.updates[:-1]] == [0, 120, 500]
    states = [(line["state"], line["done"]) for line in phases.metrics.lines]
    assert states == [("started", 0), ("running", 500), ("done", 1000)]
    assert phases.metrics.lines[-1]["elapsed_s"] == 10.0
    log = out.getvalue().splitlines()
    assert log == [
        "sdtui-train: caching latents 0/1000 images",
        "sdtui-train: caching latents 500/1000 images, 6 s left, 6 s so far",
        "sdtui-train: caching latents: 1000 images in 10 s",
    ]
    assert phases.durations == {"cache_latents": 10.0}


def test_progress_text_reads_like_a_sentence():
    assert progress_text("caching latents", 312, 1000, 40.2) == "caching latents 312/1000, 40 s left"
    assert progress_text("loading the model", 0, 0, None, elapsed_s=12.4) == "loading the model, 12 s so far"


def test_a_run_reports_every_phase_before_its_first_step(tmp_path, tiny_models, kohya_dataset, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    data = kohya_dataset(((2, "sks dog", 4),))
    settings = {"cache_latents": True, "cache_text_encoder_outputs": True}
    run = make_run(tmp_path / "run", tiny_models("sd1"), data, "sd1", "lora", settings=settings, schedule={"max_steps": 2, "epochs": 0})

    assert train(run) == 0

    phases = metrics(run, "phase")
    done = {p["phase"]: p for p in phases if p["state"] == "done"}
    assert list(done) == ["process_start", "load_model", "cache_latents", "cache_text", "first_step"]
    assert (done["cache_latents"]["encoded"], done["cache_latents"]["reused"], done["cache_latents"]["total"]) == (4, 0, 4)
    assert done["cache_text"]["total"] == 4  # four distinct captions
    first = done["first_step"]
    assert first["since_start_s"] >= sum(v for k, v in first["phases"].items() if k != "process_start")
    assert set(first["phases"]) == {"process_start", "load_model", "cache_latents", "cache_text"}
    assert all(math.isfinite(p["elapsed_s"]) for p in done.values() if "elapsed_s" in p)
    kinds = [line["type"] for line in metrics(run)]
    assert kinds.index("step") > max(i for i, k in enumerate(kinds) if k == "phase" and metrics(run)[i]["phase"] != "first_step")
    assert "phase" not in status(run)  # cleared once training runs
    out = capsys.readouterr().out
    assert "sdtui-train: caching latents: 4 images in" in out and "first step" in out

    again = make_run(tmp_path / "again", tiny_models("sd1"), data, "sd1", "lora", settings=settings, schedule={"max_steps": 1, "epochs": 0})
    assert train(again) == 0
    cached = next(p for p in metrics(again, "phase") if p["phase"] == "cache_latents" and p["state"] == "done")
    assert (cached["encoded"], cached["reused"]) == (0, 4)  # the second run on the same images encodes nothing


@pytest.mark.xdist_group("ddp")
def test_two_processes_share_the_latent_caching_and_a_resume_encodes_nothing(tmp_path, tiny_models, kohya_dataset):
    data = kohya_dataset(((1, "sks dog", 5),))
    cache = tmp_path / "cache"
    run = make_run(tmp_path / "run", tiny_models("sd1"), data, "sd1", "lora", settings={"cache_latents": True}, schedule={"max_steps": 2, "epochs": 0, "save_every_steps": 1}, processes=2)

    first = launch(run, 2, env={"XDG_CACHE_HOME": str(cache)})

    assert first.returncode == 0, first.stderr[-3000:]
    done = next(p for p in metrics(run, "phase") if p["phase"] == "cache_latents" and p["state"] == "done")
    assert (done["encoded"], done["reused"], done["entries"], done["processes"]) == (3, 0, 5, 2)  # rank 0 encoded its 3 of 5
    assert len(list((cache / "sdtui" / "latents").rglob("*.safetensors"))) == 5  # rank 1 wrote the other 2
    assert len([p for p in metrics(run, "phase") if p["phase"] == "first_step"]) == 1  # rank 0 reports, once

    doc = tomlkit.parse((run / "run.toml").read_text())
    doc["schedule"]["max_steps"] = 3  # go on from the step-2 checkpoint
    (run / "run.toml").write_text(tomlkit.dumps(doc))
    second = launch(run, 2, env={"XDG_CACHE_HOME": str(cache)})
    assert second.returncode == 0, second.stderr[-3000:]
    assert status(run)["step"] == 3
    again = [p for p in metrics(run, "phase") if p["phase"] == "cache_latents" and p["state"] == "done"][-1]
    assert (again["encoded"], again["reused"], again["entries"]) == (0, 3, 5)  # the resume encodes nothing (rank 0's share: 3)


def test_a_phase_without_items_counts_up_on_the_heartbeats_tick():
    now = [0.0]
    out = io.StringIO()
    phases = Phases(_Status(), _Metrics(), clock=lambda: now[0], out=out)
    phases.start("load_model")
    for second in (2.0, 4.0, 6.0):
        now[0] = second
        phases.tick()
    assert [u["phase"]["elapsed_s"] for u in phases.status.updates] == [0.0, 2.0, 4.0, 6.0]
    assert out.getvalue().splitlines()[-1] == "sdtui-train: loading the model, 6 s so far"


def test_a_slow_item_holds_the_time_left_while_the_time_so_far_grows():
    now = [0.0]
    phases = Phases(_Status(), _Metrics(), clock=lambda: now[0], out=io.StringIO())
    phases.start("cache_latents", 9, "images")
    now[0] = 10.0
    phases.advance(1)  # 10 s an image: 80 s left
    now[0] = 130.0
    phases.tick()  # the second image has taken 2 minutes so far
    record = phases.status.updates[-1]["phase"]
    assert (record["done"], record["elapsed_s"], record["item_s"], record["eta_s"]) == (1, 130.0, 120.0, 70.0)


def test_the_heartbeat_thread_ticks_the_progress(tmp_path, monkeypatch):
    import threading

    from core.train import status as status_module

    monkeypatch.setattr(status_module, "HEARTBEAT_S", 0.05)
    ticked = threading.Event()
    heartbeat = status_module.Heartbeat(tmp_path / "heartbeat", tick=ticked.set)
    with heartbeat.busy():
        assert ticked.wait(5)
    assert (tmp_path / "heartbeat").exists()


def test_a_stop_during_start_up_ends_at_the_next_item_and_keeps_what_was_generated(tmp_path, tiny_models, kohya_dataset, monkeypatch):
    from core.launch.control import request
    from core.runs.rundir import RunDir
    from core.train import startup
    from core.train.phases import Phases as PhasesClass

    monkeypatch.setattr(startup, "STOP_CHECK_S", 0.0)
    data = kohya_dataset(((1, "sks dog", 2),))
    run = make_run(
        tmp_path / "run",
        tiny_models("sd1"),
        data,
        "sd1",
        "dreambooth",
        settings={"class_images_per_instance": 6},
        schedule={"max_steps": 2, "epochs": 0},
        method_extra={"class_prompt": "a dog"},
    )
    advance = PhasesClass.advance

    def stop_after_the_first_batch(self, done):
        if self._name == "class_images" and done > 0 and not (run / "control.json").exists():
            request(RunDir(run), "stop")  # what `sdtui stop` writes
        advance(self, done)

    monkeypatch.setattr(PhasesClass, "advance", stop_after_the_first_batch)

    assert train(run) == 0

    recorded = status(run)
    assert recorded["state"] == "stopped" and recorded["control_ack"]["action"] == "stop"
    assert recorded["note"].startswith("stopped during start-up while generating class images (4/12 images kept)")
    assert len(list((run / "class_images").glob("class_*.png"))) == 4
    assert not metrics(run, "step") and not (run / "checkpoints").exists()
    assert metrics(run)[-1]["type"] == "end" and metrics(run)[-1]["state"] == "stopped"
