"""``python -m bench.bench_gpu`` runs every code path on the CPU in its tiny mode, so the first GPU session can run it as is."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench.bench_gpu import calibrate, describe, main, run_cases
from core.memory.calibration import calibration_points, match_point

LINE = re.compile(r"ours [\d.]+ img/s .* first step after [\d.]+s \(.*load_model.*\) vs reference [\d.]+ img/s .* ratio=[\d.]+$")


@pytest.mark.slow
def test_the_tiny_mode_runs_both_families_and_methods_and_writes_the_results(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\nearlier figures\n", encoding="utf-8")
    lines = []
    for family, method in (("sd1", "lora"), ("sdxl", "finetune")):
        lines += main(["--tiny", "--family", family, "--method", method, "--batch", "1", "--workdir", str(tmp_path / "work"), "--results", str(results)])

    assert [line.split(":")[0] for line in lines] == [
        "gpu_sd1_lora_64px_b1_tiny_cpu (checks the script; not a GPU figure)",
        "gpu_sdxl_finetune_64px_b1_tiny_cpu (checks the script; not a GPU figure)",
    ]
    assert all(LINE.search(line) for line in lines), lines
    text = results.read_text(encoding="utf-8")
    assert text.startswith("# Benchmark results\n\n## ") and text.endswith("earlier figures\n")  # newest first, nothing lost
    assert text.count("GPU run, `python -m bench.bench_gpu`") == 2 and all(line in text for line in lines)
    assert "**Machine:** CPU; " in text and " cores, " in text


def test_a_case_that_would_run_past_the_budget_is_not_started(tmp_path: Path) -> None:
    lines = run_cases(True, "sd1", "lora", 1, tmp_path, budget_s=-1.0)
    assert lines == [line for line in lines if "not measured" in line and "budget" in line] and len(lines) == 1
    assert not (tmp_path / "model-sd1-tiny").exists()  # nothing was built


def test_the_measured_peak_goes_into_the_calibration_table_beside_the_estimate(tmp_path: Path) -> None:
    table = tmp_path / "calibration.json"
    settings = {"batch_size": 4, "resolution": 512, "mixed_precision": "bf16", "gradient_checkpointing": False}
    ours = {"ips": 10.0, "reserved": 9 * 2**30, "nvml_peak": 10 * 2**30, "estimate": 8 * 2**30, "settings": settings}

    line = calibrate("sd1", "lora", ours, "NVIDIA H200", table)

    assert "recorded 10.0GiB (NVML device peak)" in line and "estimator 8.0GiB (measured/estimated 1.25)" in line
    point = match_point("sd1", "lora", settings, 1, "ddp", table)
    assert point is not None and point["measured_peak_bytes"] == 10 * 2**30 and "H200" in point["source"]
    calibrate("sd1", "lora", {**ours, "nvml_peak": None}, "NVIDIA H200", table)  # no NVML: the allocator's figure
    assert [p["measured_peak_bytes"] for p in calibration_points(table)] == [9 * 2**30]


def test_a_failed_or_out_of_memory_side_is_named_on_the_line() -> None:
    ok = {"ips": 2.0, "reserved": None, "nvml_peak": None, "flops_per_image": 1e12}
    line = describe("gpu_x", ok, {"oom": True, "reserved": 80 * 2**30}, 989.0)
    assert "vs reference out of memory (reserved 80.0GiB)" in line and line.endswith("ratio=n/a")
    line = describe("gpu_x", {"error": "exit 1: boom"}, ok, 989.0)
    assert "ours failed (exit 1: boom)" in line and line.endswith("ratio=n/a")
    assert "MFU 0.2%" in describe("gpu_x", ok, ok, 989.0)  # 1 TFLOP/img × 2 img/s of 989 TFLOP/s


@pytest.mark.slow
def test_the_technique_cases_run_in_the_tiny_mode_within_the_budget(tmp_path: Path) -> None:
    """The first SDXL case (a bf16 base) trains and reports its step time and memory; the budget stops the rest."""
    lines = main(["--techniques", "--tiny", "--family", "sdxl", "--workdir", str(tmp_path / "work"), "--budget-s", "1", "--no-write"])
    assert [line.split(":")[0].split("_64px")[0] for line in lines] == [
        "tech_sdxl_bf16_swap0",
        "tech_sdxl_fp8_swap0",
        "tech_sdxl_int8_swap0",
        "tech_sdxl_nf4_swap0",
        "tech_sdxl_bf16_swap2",
        "tech_sdxl_bf16_swap4",
        "tech_sdxl_finetune_swap0",
        "tech_sdxl_finetune_swap4",
    ]
    assert re.search(r": step [\d.]+s allocated n/a reserved n/a nvml n/a estimate n/a$", lines[0]), lines[0]
    assert all("not measured" in line for line in lines[1:])
