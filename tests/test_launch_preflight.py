"""Preflight: each problem is one clear sentence before anything starts."""

from __future__ import annotations

import shutil
from collections import namedtuple
from dataclasses import replace
from pathlib import Path

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
    config = apply_overrides(load_config(config_path), ["resolution=1024", "batch_size=8", "optimizer=adamw"])
    small = parse_spec("1x2GB")
    with pytest.raises(UserError, match="does not fit the smallest chosen GPU .* pass --yes"):
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
    with pytest.raises(UserError, match="runs folder .* cannot be created .* writable --runs-dir"):
        pf.preflight(load_config(config_path), blocker / "runs", GpuSet([]))
