"""``sdtui gpus`` and ``sdtui recipes``: what a user sees, with and without GPUs."""

from __future__ import annotations

import json

import pytest

import core.gpu
from cli.main import main
from core.gpu import GpuInfo, GpuProcess, GpuSet, find_model
from core.units import GIB


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core.gpu, "probe", lambda nvml=None: GpuSet([], reason="no NVIDIA driver was found"))


@pytest.fixture
def one_busy_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    gpu = GpuInfo(
        0,
        "NVIDIA GeForce RTX 3090",
        24 * GIB,
        18 * GIB,
        (8, 6),
        True,
        "550.54",
        "12.4",
        "GPU-1",
        [GpuProcess(777, "python3", 6 * GIB)],
        utilization=41,
        model=find_model("NVIDIA GeForce RTX 3090"),
    )
    monkeypatch.setattr(core.gpu, "probe", lambda nvml=None: GpuSet([gpu]))


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_no_gpu_prints_a_sentence_with_the_way_forward(no_gpu: None, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "gpus")
    assert code == 0
    assert "No usable GPU: no NVIDIA driver was found" in out
    assert "sdtui demo" in out and "--gpus 1x24GB" in out


def test_probed_gpu_table_shows_memory_driver_and_processes(one_busy_gpu: None, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "gpus")
    assert code == 0
    row = next(line for line in out.splitlines() if "RTX 3090" in line)
    assert "24.0 GiB" in row and "18.0 GiB" in row and "yes" in row and "41%" in row and "71" in row
    assert "driver 550.54, CUDA 12.4" in out
    assert "GPU 0 is in use by python3 (pid 777, 6.0 GiB)" in out


@pytest.mark.parametrize("argv", [["--gpus", "2x4090", "gpus"], ["gpus", "--gpus", "2x4090"]])
def test_simulated_gpus_from_the_global_or_local_option(no_gpu: None, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, out, _ = run(capsys, *argv)
    assert code == 0 and "Simulated hardware (2x4090)" in out
    assert sum("GeForce RTX 4090" in line for line in out.splitlines()) == 2


def test_gpus_json(no_gpu: None, capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(capsys, "--gpus", "4xA100-80GB", "gpus", "--json")
    data = json.loads(out)
    assert data["count"] == 4 and data["simulated"] and data["gpus"][3]["model"] == "a100-80gb"
    _, out, _ = run(capsys, "gpus", "--json")
    assert json.loads(out) == {"count": 0, "simulated": False, "reason": "no NVIDIA driver was found", "notes": [], "gpus": []}


def test_bad_spec_exits_2_with_one_sentence(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--gpus", "3xRTX9999", "gpus")
    assert code == 2 and out == ""
    assert err.startswith("sdtui: the GPU spec '3xRTX9999'") and "2x4090" in err and len(err.strip().splitlines()) == 1


def test_catalog_lists_spec_names(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(capsys, "gpus", "--catalog")
    assert "A100-80GB" in out and "H200" in out and "T4" in out
    _, out, _ = run(capsys, "gpus", "--catalog", "--json")
    assert any(m["key"] == "4090" and m["tflops_bf16"] > 100 for m in json.loads(out))


def test_recipes_table_with_fits_on_a_small_card(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--gpus", "1x8GB", "recipes", "--family", "sdxl", "--method", "lora")
    assert code == 0
    rows = {line.split()[0]: line for line in out.splitlines()[1:] if line and not line.startswith(("fits", " "))}
    assert set(rows) == {"sdxl-lora-fp8-6gb", "sdxl-lora-8gb", "sdxl-lora-12gb", "sdxl-lora-te-16gb", "sdxl-lora-24gb-fast"}
    assert " yes " in rows["sdxl-lora-fp8-6gb"] and " yes " in rows["sdxl-lora-8gb"] and " no " in rows["sdxl-lora-24gb-fast"]


def test_recipes_json_has_every_recipe_with_estimates(no_gpu: None, capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(capsys, "recipes", "--json")
    data = json.loads(out)
    assert data["gpu"] is None and len(data["recipes"]) >= 16
    ti = next(r for r in data["recipes"] if r["name"] == "sd-ti-6gb")
    assert set(ti["estimates"]) == {"sd1/textual_inversion", "sd2/textual_inversion"}
    assert all(e["fits"] is None and e["gb"] > 1 for e in ti["estimates"].values())
