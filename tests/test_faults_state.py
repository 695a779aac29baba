"""Damaged state the user never sees directly: shared cache entries, status.json, metrics.jsonl,
stray checkpoint folders. Faults injected on purpose into the real files; each test asserts what
the user would notice (images trained on, the step shown, what resume does) — issue 19."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch

from core.train.data.items import build_items, distinct_captions
from core.train.data.latent_cache import cache_latents, read_entry
from core.train.data.text_cache import cache_text_outputs
from core.train.data.text_cache import read_entry as read_text_entry
from core.train.model.loading import load_components
from tests.train_helpers import make_run, metrics, train


def _items(data: Path):
    subsets = [{"path": str(p), "repeats": 1, "token": "sks dog", "is_reg": False} for p in sorted(data.iterdir()) if p.is_dir()]
    return build_items({"dataset": {"subsets": subsets}}, {"resolution": 64, "min_bucket_reso": 64})


def damage(files: list[Path]) -> dict[Path, int]:
    """Truncate the first file, overwrite the second with junk of its own length; their sizes before."""
    sizes = {p: p.stat().st_size for p in files[:2]}
    files[0].write_bytes(files[0].read_bytes()[: sizes[files[0]] // 2])
    files[1].write_bytes(os.urandom(sizes[files[1]]))
    return sizes


def two_ranks(cache: Callable[[int, Callable[[], None]], Any]) -> list[Any]:
    """``cache(rank, barrier)`` of two ranks at once in threads, meeting at a real barrier (as DDP ranks do)."""
    barrier = threading.Barrier(2, timeout=120)
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(cache, rank, barrier.wait) for rank in (0, 1)]
        return [f.result() for f in futures]


@pytest.mark.parametrize("in_memory", [True, False])
def test_damaged_latent_cache_entries_are_encoded_again_in_both_shares_of_two_ranks(tmp_path, tiny_models, kohya_dataset, in_memory):
    components = load_components(str(tiny_models("sd1")))
    data = kohya_dataset(((1, "sks dog", 6),))
    folder = tmp_path / "latents"
    first = cache_latents(components, _items(data), "cpu", torch.float32, folder)
    files = sorted(folder.rglob("*.safetensors"))
    assert len(first) == len(files) == 6
    before = {p: read_entry(p)[0] for p in files}
    sizes = damage(files)

    ranks = two_ranks(lambda rank, barrier: cache_latents(components, _items(data), "cpu", torch.float32, folder, in_memory=in_memory, rank=rank, world=2, barrier=barrier))

    assert [len(cache) for cache in ranks] == [6, 6]  # no image dropped on either rank
    assert sum(cache.encoded for cache in ranks) == 2 and sum(cache.reused for cache in ranks) == 4
    for path, size in sizes.items():  # the damaged files are replaced by good ones
        assert path.stat().st_size == size
        torch.testing.assert_close(read_entry(path)[0], before[path])
    again = cache_latents(components, _items(data), "cpu", torch.float32, folder)
    assert (again.encoded, again.reused, len(again)) == (0, 6, 6)


@pytest.mark.slow
def test_a_damaged_latent_cache_costs_no_image_in_a_real_run(tmp_path, tiny_models, kohya_dataset, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    data = kohya_dataset(((1, "sks dog", 6),))
    run = make_run(tmp_path / "run", tiny_models("sd1"), data, settings={"cache_latents": True}, schedule={"max_steps": 1, "epochs": 0})
    assert train(run) == 0
    damage(sorted((tmp_path / "cache" / "sdtui" / "latents").rglob("*.safetensors")))
    second = make_run(tmp_path / "second", tiny_models("sd1"), data, settings={"cache_latents": True}, schedule={"max_steps": 1, "epochs": 0})

    assert train(second) == 0

    done = next(p for p in metrics(second, "phase") if p["phase"] == "cache_latents" and p["state"] == "done")
    assert (done["encoded"], done["reused"], done["entries"]) == (2, 4, 6), done
    assert not [e for e in metrics(second, "event") if "skipping" in e.get("message", "")]


def test_a_damaged_text_cache_entry_of_another_rank_stops_the_run_instead_of_dropping_it(tmp_path, tiny_models, kohya_dataset):
    components = load_components(str(tiny_models("sd1")))
    data = kohya_dataset(((1, "sks dog", 2),))
    folder = tmp_path / "text"
    cache_text_outputs(components, _items(data), "cpu", torch.float32, folder)
    files = sorted(folder.rglob("*.safetensors"))
    captions = len(distinct_captions(_items(data)))
    assert len(files) == captions >= 2
    for path in files:  # the other rank's entries are damaged after it wrote them (a second run overwriting)
        path.write_bytes(path.read_bytes()[:-8] + b"\x00\x00\xc0\x7f\x00\x00\xc0\x7f")  # NaN at the end

    assert all(read_text_entry(p) is None for p in files)
    with pytest.raises(RuntimeError, match="does not read back"):
        cache_text_outputs(components, _items(data), "cpu", torch.float32, folder, rank=0, world=2, barrier=lambda: [p.write_bytes(b"junk") for p in files])


def test_every_record_starts_on_a_fresh_line_after_junk_appended_to_a_live_metrics_file(tmp_path):
    from core.runs.readers import records
    from core.train.metrics_writer import MetricsWriter

    path = tmp_path / "metrics.jsonl"
    writer = MetricsWriter(path)
    writer.write("step", step=1)
    with open(path, "ab") as other:  # another process appends junk without a newline while the run writes
        other.write(b"\x00junk{")
    writer.write("step", step=2)
    writer.write("step", step=3)
    writer.close()

    assert [r["step"] for r in records(path.read_bytes())] == [1, 2, 3]


# --- real runs through the supervisor and the CLI -------------------------------------------------


def finished_run(tmp_path: Path, tiny_models, kohya_dataset):
    """A finished run of 6 steps (checkpoints every 3) and its runs folder."""
    from core.gpu import GpuSet
    from core.launch.start import start_run
    from tests.test_launch_support import wait_ended, write_config

    config = write_config(tmp_path, tiny_models("sd1"), kohya_dataset(((3, "sks dog", 2),)), {"epochs": 1, "save_every_steps": 3})
    run = start_run(config, tmp_path / "runs", gpus=GpuSet([], reason="test: CPU only"))
    assert wait_ended(run)["state"] == "finished"
    return run, tmp_path / "runs"


@pytest.mark.slow
def test_a_finished_run_with_junk_in_status_and_metrics_stays_finished_and_resume_keeps_its_outputs(tmp_path, tiny_models, kohya_dataset):
    from tests.test_launch_support import sdtui

    run, runs = finished_run(tmp_path, tiny_models, kohya_dataset)
    outputs = {p: p.stat().st_mtime_ns for p in run.output.rglob("*") if p.is_file()}
    assert outputs
    run.status_json.write_bytes(b"\x00\xffjunk")
    with open(run.metrics, "ab") as handle:
        handle.write(os.urandom(2 * 1024 * 1024).replace(b"\n", b"x"))

    listed = sdtui(["runs", "--runs-dir", str(runs)], tmp_path)
    assert f"{run.id}  finished" in listed.stdout and "6/6" in listed.stdout, listed.stdout
    shown = sdtui(["status", run.id, "--runs-dir", str(runs)], tmp_path)
    assert "state     finished" in shown.stdout and "step      6/6" in shown.stdout and "sdtui resume" not in shown.stdout, shown.stdout
    resumed = sdtui(["resume", run.id, "--runs-dir", str(runs)], tmp_path)
    assert resumed.returncode == 2 and "has finished and resuming it would replace its outputs" in resumed.stderr and "--again" in resumed.stderr
    assert {p: p.stat().st_mtime_ns for p in run.output.rglob("*") if p.is_file()} == outputs
    rebuilt = run.rebuild_status()
    assert (rebuilt["attempt"], rebuilt["step"], rebuilt["total_steps"]) == (1, 6, 6)


@pytest.mark.slow
def test_a_planted_checkpoint_is_not_the_run_and_unfinished_ones_are_cleaned_at_start_up(tmp_path, tiny_models, kohya_dataset):
    import json
    import shutil

    from tests.test_launch_support import sdtui, wait_ended

    run, runs = finished_run(tmp_path, tiny_models, kohya_dataset)
    run.write_status(state="stopped")  # as if stopped after its last checkpoint, so resume may go on
    shutil.rmtree(run.checkpoints / "step-6")
    shutil.copytree(run.checkpoints / "step-3", run.checkpoints / "step-999")  # planted by hand
    (run.checkpoints / "step-500").mkdir()
    (run.checkpoints / "step-500" / "state.json").write_text("{}")
    shutil.copytree(run.checkpoints / "step-3", run.checkpoints / ".tmp-step-4")  # a save killed mid-write
    assert json.loads((run.checkpoints / "step-999" / "state.json").read_text())["step"] == 3

    shown = sdtui(["status", run.id, "--runs-dir", str(runs)], tmp_path)
    assert "999" not in shown.stdout and "step-3" in shown.stdout, shown.stdout
    resumed = sdtui(["resume", run.id, "--runs-dir", str(runs)], tmp_path)
    assert resumed.returncode == 0 and "from step-3" in resumed.stdout, resumed.stderr
    final = wait_ended(run)
    assert final["state"] == "finished" and final["step"] == 6
    assert not (run.checkpoints / ".tmp-step-4").exists()
    listed = sdtui(["runs", "--runs-dir", str(runs)], tmp_path)
    assert f"{run.id}  finished" in listed.stdout and "6/6" in listed.stdout and "999" not in listed.stdout


@pytest.mark.slow
def test_a_damaged_status_of_a_live_run_keeps_every_field_at_the_next_write(tmp_path, tiny_models, kohya_dataset):
    from core.gpu import GpuSet
    from core.launch.start import start_run
    from tests.test_launch_support import sdtui, wait_ended, wait_for, write_config

    config = write_config(tmp_path, tiny_models("sd1"), kohya_dataset(((40, "sks dog", 2),)), {"epochs": 1, "save_every_steps": 0})
    runs = tmp_path / "runs"
    run = start_run(config, runs, gpus=GpuSet([], reason="test: CPU only"))
    wait_for(lambda: run.read_status().get("state") == "running" and (run.read_status().get("step") or 0) >= 2, 240, "a few steps")
    before = run.read_status()
    keys = ("total_steps", "steps_per_epoch", "world_size", "attempt", "attempt_id", "trainer_pids", "command")
    assert all(before.get(k) for k in keys), before
    run.status_json.write_bytes(b'{"state": "runn')

    after = wait_for(lambda: (s := run.read_status()).get("state") == "running" and s.get("step", 0) > before["step"] and s, 240, "the next step")
    assert {k: bool(after.get(k)) for k in keys} == dict.fromkeys(keys, True), after
    assert (after["total_steps"], after["steps_per_epoch"], after["world_size"], after["attempt_id"]) == (
        before["total_steps"],
        before["steps_per_epoch"],
        before["world_size"],
        before["attempt_id"],
    )
    assert f"/{before['total_steps']}" in sdtui(["status", run.id, "--runs-dir", str(runs)], tmp_path).stdout
    sdtui(["stop", run.id, "--runs-dir", str(runs)], tmp_path)
    wait_ended(run)


def test_disk_messages_name_the_reserve_and_use_a_unit_that_shows_the_number(tmp_path):
    from core.train.disk import DiskFull

    message = str(DiskFull(tmp_path, 1_150_000, 100_000, "the output"))
    assert "(1.10 MiB free, the output needs 97.7 KiB plus 1.00 MiB kept free for the final status and log lines)" in message


@pytest.mark.slow
@pytest.mark.xdist_group("ddp")
def test_two_processes_encode_damaged_latent_and_text_entries_again_and_train_on_every_image(tmp_path, tiny_models, kohya_dataset):
    from tests.train_helpers import launch

    cache = tmp_path / "cache"
    data = kohya_dataset(((1, "sks dog", 6),))
    settings = {"cache_latents": True, "cache_text_encoder_outputs": True}
    first = make_run(tmp_path / "first", tiny_models("sd1"), data, settings=settings, schedule={"max_steps": 1, "epochs": 0}, processes=2)
    assert launch(first, 2, env={"XDG_CACHE_HOME": str(cache)}).returncode == 0
    for kind in ("latents", "text"):
        damage(sorted((cache / "sdtui" / kind).rglob("*.safetensors")))
    second = make_run(tmp_path / "second", tiny_models("sd1"), data, settings=settings, schedule={"max_steps": 1, "epochs": 0}, processes=2)

    result = launch(second, 2, env={"XDG_CACHE_HOME": str(cache)})

    assert result.returncode == 0, result.stderr[-3000:]
    done = {p["phase"]: p for p in metrics(second, "phase") if p["state"] == "done"}
    assert done["cache_latents"]["entries"] == 6 and done["cache_text"]["entries"] == len(distinct_captions(_items(data)))
    assert not [e for e in metrics(second, "event") if "skipping" in e.get("message", "")]
    for kind in ("latents", "text"):
        assert all(p.stat().st_size > 64 for p in (cache / "sdtui" / kind).rglob("*.safetensors"))
