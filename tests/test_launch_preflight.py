"""Preflight: each problem is one clear sentence before anything starts."""

from __future__ import annotations

import shutil
from collections import namedtuple
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from core.config import apply_overrides, load_config
from core.errors import UserError
from core.gpu import GpuProcess, GpuSet, parse_spec
from core.launch import preflight as pf
from tests.test_launch_support import write_config


@pytest.fixture
def config_path(tmp_path: Path, tiny_models, kohya_dataset) -> Path:
    return write_config(tmp_path, tiny_models("sd1"), kohya_dataset(((2, "sks dog", 3),)))


def test_cpu_run_passes_with_a_notice(tmp_path: Path, config_path: Path) -> None:
    result = pf.preflight(load_config(config_path), tmp_path / "runs", GpuSet([], reason="no NVIDIA driver was found"))
    assert result.use_cpu and result.gpus.count == 0
    assert any("runs on the CPU" in n and "no NVIDIA driver" in n for n in result.notices)
    assert result.plan.to_json(1)["run"]["total_steps"] == 6
    assert 0 < result.disk_needed_bytes < 1024**3


def test_fp16_on_the_cpu_is_refused_before_the_launch(tmp_path: Path, config_path: Path) -> None:
    config = apply_overrides(load_config(config_path), ["mixed_precision=fp16"])
    with pytest.raises(UserError, match=r'^settings.mixed_precision = "fp16" needs a GPU .*set mixed_precision to "bf16" or "no"'):
        pf.preflight(config, tmp_path / "runs", GpuSet([], reason="no NVIDIA driver was found"))
    assert pf.preflight(config, tmp_path / "runs", parse_spec("1x4090")).use_cpu is False  # a GPU takes fp16


def test_full_disk_is_refused(tmp_path: Path, config_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _path: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(UserError, match=r"has 1000 B free but the run will write about [0-9.]+ [KMG]iB of checkpoints and outputs; .* lower schedule\.keep_checkpoints"):
        pf.preflight(load_config(config_path), tmp_path / "runs", GpuSet([]))


def test_disk_estimate_grows_with_kept_checkpoints_and_full_finetune(config_path: Path) -> None:
    config = load_config(config_path)
    plan = pf.preflight(config, config_path.parent / "runs", GpuSet([])).plan
    base = pf.disk_needed(config, plan)
    more = pf.disk_needed(config, replace(plan, schedule={**plan.schedule, "keep_checkpoints": 10}))
    assert more > base
    full = apply_overrides(load_config(config_path), ["method.kind=finetune"])
    assert pf.disk_needed(full, plan) > 10 * base


def test_missing_model_and_dataset(tmp_path: Path, config_path: Path) -> None:
    config = apply_overrides(load_config(config_path), [f"model.path={tmp_path / 'nope'}"])
    with pytest.raises(UserError, match=r"the model .*nope does not exist; fix \[model\] path"):
        pf.preflight(config, tmp_path / "runs", GpuSet([]))
    not_a_model = tmp_path / "empty-model"
    not_a_model.mkdir()
    with pytest.raises(UserError, match="is not a diffusers model"):
        pf.check_model(str(not_a_model))
    config = load_config(config_path)
    shutil.rmtree(config.subsets[0]["path"])
    with pytest.raises(UserError, match=r"dataset folder .* does not exist; fix its \[\[dataset.subsets\]\] path"):
        pf.preflight(config, tmp_path / "runs", GpuSet([]))


def test_dataset_without_usable_images(tmp_path: Path, config_path: Path) -> None:
    config = load_config(config_path)
    for image in Path(config.subsets[0]["path"]).glob("*.png"):
        image.write_bytes(b"not a png")
    with pytest.raises(UserError, match="has no usable image"):
        pf.preflight(config, tmp_path / "runs", GpuSet([]))


def test_plan_that_does_not_fit_needs_yes(tmp_path: Path, config_path: Path) -> None:
    config = apply_overrides(load_config(config_path), ["resolution=1024", "max_bucket_reso=2048", "batch_size=8", "optimizer=adamw"])
    small = parse_spec("1x2GB")
    with pytest.raises(UserError, match=r"does not fit the smallest chosen GPU .* pass --yes"):
        pf.preflight(config, tmp_path / "runs", small)
    forced = pf.preflight(config, tmp_path / "runs", small, force=True)
    assert any("launching anyway" in n for n in forced.notices) and not forced.use_cpu


def test_busy_gpu_is_a_warning_and_too_many_processes_an_error(tmp_path: Path, config_path: Path) -> None:
    gpus = parse_spec("2x80GB")
    busy = replace(gpus.gpus[0], processes=[GpuProcess(4242, "python", 30 * 1024**3)])
    result = pf.preflight(load_config(config_path), tmp_path / "runs", GpuSet([busy, gpus.gpus[1]]))
    assert any("GPU 0 already has 30.0 GiB in use by python (pid 4242)" in n for n in result.notices)
    config = apply_overrides(load_config(config_path), ["distributed.num_processes=3"])
    with pytest.raises(UserError, match="num_processes is 3 but this machine has 2 GPU"):
        pf.preflight(config, tmp_path / "runs", gpus)
    config = apply_overrides(load_config(config_path), ["distributed.gpu_ids=5"])
    with pytest.raises(UserError, match="names GPU 5"):
        pf.preflight(config, tmp_path / "runs", gpus)


def test_runs_folder_must_be_writable(tmp_path: Path, config_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match=r"runs folder .* cannot be created .* writable --runs-dir"):
        pf.preflight(load_config(config_path), blocker / "runs", GpuSet([]))


def _live_twin_of(config_path: Path, runs: Path, gpu_ids: str = "all") -> Any:
    """A run folder of the config that is live: its supervisor is this test process, holding the
    folder's lock (returned: the run is live while it is open)."""
    import json

    import psutil

    from core.procs import describe
    from core.runs.locks import lock
    from core.runs.rundir import RunDir

    config = load_config(config_path)
    config = apply_overrides(config, [f"distributed.gpu_ids={gpu_ids}"]) if gpu_ids != "all" else config
    run = runs / "tiny-20251009-120000"
    run.mkdir(parents=True)
    from core.config import save_config

    save_config(config, run / "run.toml")
    status = {"state": "running", "step": 3, "total_steps": 6, "pids": [describe(psutil.Process(), "supervisor")]}
    (run / "status.json").write_text(json.dumps(status))
    return lock(RunDir(run).supervisor_lock)


def test_a_second_live_run_of_the_same_config_is_refused_unless_allowed(tmp_path: Path, config_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from core.launch import start

    runs = tmp_path / "runs"
    held = _live_twin_of(config_path, runs)
    spawned: list = []
    monkeypatch.setattr(start, "spawn_supervisor", lambda run, held: spawned.append(run.id) or 0)
    cpu = GpuSet([], reason="no NVIDIA driver was found")
    with pytest.raises(start.ConcurrentRun, match=r"^run tiny-20251009-120000 of the same config is already running on the same GPUs; .*--allow-concurrent") as refused:
        start.start_run(config_path, runs, gpus=cpu)
    assert refused.value.run_id == "tiny-20251009-120000" and not spawned
    # another seed is another training; GPUs that do not overlap are not the same GPUs
    start.start_run(config_path, runs, ["schedule.seed=5"], gpus=cpu)
    assert len(spawned) == 1
    start.start_run(config_path, runs, gpus=cpu, allow_concurrent=True)
    assert len(spawned) == 2
    held.close()


def test_a_live_run_on_other_gpus_is_not_the_same_run(tmp_path: Path, config_path: Path) -> None:
    from core.launch.start import live_twin

    runs = tmp_path / "runs"
    held = _live_twin_of(config_path, runs, gpu_ids="0")
    config = load_config(config_path)
    assert live_twin(config, runs) is not None  # "all" overlaps GPU 0
    assert live_twin(apply_overrides(config, ["distributed.gpu_ids=1"]), runs) is None
    (runs / "tiny-20251009-120000" / "status.json").write_text('{"state": "finished", "pids": []}')
    assert live_twin(config, runs) is None
    held.close()


def test_sdtui_train_refuses_the_twin_with_exit_2_and_one_sentence(tmp_path: Path, config_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cli.main import main

    runs = tmp_path / "runs"
    held = _live_twin_of(config_path, runs)
    assert main(["--runs-dir", str(runs), "train", str(config_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sdtui: run tiny-20251009-120000 of the same config is already running on the same GPUs;") and "\n" not in err
    assert [p.name for p in runs.iterdir()] == ["tiny-20251009-120000"]
    held.close()
