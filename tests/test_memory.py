"""core.memory: each setting moves the estimate the way it moves the real peak; sane absolute figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from core.errors import UserError
from core.memory import BREAKDOWN_KEYS, estimate, record_calibration
from core.memory import data as memory_data
from core.memory.calibration import match_point

GB = 2**30
BASE: dict[str, Any] = {
    "mixed_precision": "bf16",
    "gradient_checkpointing": True,
    "optimizer": "adamw8bit",
    "cache_latents": True,
    "cache_text_encoder_outputs": True,
    "batch_size": 1,
    "resolution": 1024,
}


def total(family: str = "sdxl", method: str = "lora", **changes: Any) -> int:
    kw = {k: changes.pop(k) for k in ("num_gpus", "backend", "zero_stage", "offload", "prior_preservation") if k in changes}
    return estimate(family, method, {**BASE, **changes}, **kw).total_bytes


@pytest.mark.parametrize(
    ("method", "lower", "higher"),
    [
        ("lora", {"gradient_checkpointing": True}, {"gradient_checkpointing": False}),
        ("finetune", {"gradient_checkpointing": True}, {"gradient_checkpointing": False}),
        ("lora", {"batch_size": 1}, {"batch_size": 4}),
        ("lora", {"resolution": 768}, {"resolution": 1024}),
        ("finetune", {"optimizer": "adamw8bit"}, {"optimizer": "adamw"}),
        ("finetune", {"optimizer": "lion8bit"}, {"optimizer": "adamw8bit"}),
        ("finetune", {"optimizer": "adafactor"}, {"optimizer": "adamw8bit"}),
        ("lora", {"cache_latents": True}, {"cache_latents": False}),
        ("lora", {"cache_text_encoder_outputs": True}, {"cache_text_encoder_outputs": False}),
        ("lora", {"train_text_encoder": False}, {"train_text_encoder": True}),
        ("finetune", {"train_text_encoder": False}, {"train_text_encoder": True}),
        ("finetune", {"full_bf16": True}, {"full_bf16": False}),
        ("finetune", {"fused_backward_pass": True, "optimizer": "adafactor"}, {"fused_backward_pass": False, "optimizer": "adafactor"}),
        ("lora", {"attention": "sdpa"}, {"attention": "eager"}),
        ("lora", {"lora_rank": 8}, {"lora_rank": 128}),
        ("lora", {"lora_targets": "attn"}, {"lora_targets": "all"}),
        ("lora", {"ema": False}, {"ema": True}),
        ("finetune", {"ema": False}, {"ema": True}),
        ("lora", {"mixed_precision": "bf16"}, {"mixed_precision": "no"}),
        ("finetune", {"mixed_precision": "bf16", "gradient_checkpointing": False}, {"mixed_precision": "no", "gradient_checkpointing": False}),
        ("lora", {"num_gpus": 1}, {"num_gpus": 2}),
        ("finetune", {"prior_preservation": False}, {"prior_preservation": True}),
    ],
)
def test_setting_moves_estimate_like_the_real_peak(method: str, lower: dict[str, Any], higher: dict[str, Any]) -> None:
    assert total(method=method, **lower) < total(method=method, **higher)


def test_method_order_finetune_above_lora_above_textual_inversion() -> None:
    settings = {**BASE, "cache_text_encoder_outputs": False}
    ti = estimate("sdxl", "textual_inversion", settings).total_bytes
    lora = estimate("sdxl", "lora", settings).total_bytes
    finetune = estimate("sdxl", "finetune", settings).total_bytes
    assert ti < finetune and lora < finetune
    assert estimate("sd1", "dreambooth", BASE).total_bytes > estimate("sd1", "finetune", BASE).total_bytes


def test_family_order_at_native_resolutions() -> None:
    assert total("sd1", resolution=512) < total("sd2", resolution=768) < total("sdxl", resolution=1024)
    assert total("sd1", resolution=768) < total("sdxl", resolution=768)


def test_zero_on_four_gpus_is_lower_per_gpu_than_ddp() -> None:
    ddp = total(method="finetune", optimizer="adamw", num_gpus=4, backend="ddp")
    zero2 = total(method="finetune", optimizer="adamw", num_gpus=4, backend="deepspeed", zero_stage=2)
    zero3 = total(method="finetune", optimizer="adamw", num_gpus=4, backend="deepspeed", zero_stage=3)
    offloaded = total(method="finetune", optimizer="adamw", num_gpus=4, backend="deepspeed", zero_stage=2, offload=True)
    assert zero3 < zero2 < ddp and offloaded < zero2
    assert total(method="finetune", optimizer="adamw", num_gpus=8, backend="deepspeed") < zero2


def test_ddp_adds_gradient_buckets_and_nccl() -> None:
    one = estimate("sdxl", "finetune", BASE, num_gpus=1).breakdown
    two = estimate("sdxl", "finetune", BASE, num_gpus=2).breakdown
    assert one["ddp_buckets"] == 0 and two["ddp_buckets"] == 2_567_463_684 * 4
    assert two["communication"] > 0


def test_peak_phase_follows_what_dominates() -> None:
    finetune = {**BASE, "optimizer": "adamw"}
    gradients_peak = estimate("sdxl", "finetune", finetune)
    assert gradients_peak.phase in ("backward (end)", "optimizer step")
    assert gradients_peak.breakdown["gradients"] == 2_567_463_684 * 4
    assert estimate("sdxl", "finetune", {**finetune, "gradient_checkpointing": False}).phase == "backward (start)"
    assert estimate("sdxl", "lora", BASE).phase == "backward (start)"
    cached = estimate("sdxl", "lora", {**BASE, "mixed_precision": "fp16", "cache_latents": False})
    assert cached.phase == "VAE encoding" and cached.breakdown["vae_encode"] > 0


def test_sd15_lora_small_recipe_is_a_few_gigabytes() -> None:
    settings = {"mixed_precision": "fp16", "gradient_checkpointing": True, "optimizer": "adamw8bit", "batch_size": 1, "resolution": 512, "cache_text_encoder_outputs": False}
    assert 3 * GB <= estimate("sd1", "lora", settings).total_bytes <= 7 * GB
    cached = estimate("sd1", "lora", {**settings, "cache_text_encoder_outputs": True}).total_bytes  # the default: the encoder leaves the GPU
    assert 2 * GB <= cached < estimate("sd1", "lora", settings).total_bytes


def test_sdxl_full_finetune_adamw_fp32_master_needs_more_than_40_gb() -> None:
    settings = {"mixed_precision": "bf16", "full_bf16": False, "optimizer": "adamw", "batch_size": 1, "resolution": 1024}
    assert estimate("sdxl", "finetune", settings).total_bytes > 40 * GB


def test_sdxl_finetune_24gb_tricks_fit_in_24_gb() -> None:
    settings = {**BASE, "full_bf16": True, "fused_backward_pass": True, "optimizer": "adafactor"}
    assert estimate("sdxl", "finetune", settings).fits(24 * GB)


def test_breakdown_sums_to_total_and_has_every_part() -> None:
    found = estimate("sd2", "lora", {"resolution": 768})
    assert set(found.breakdown) == set(BREAKDOWN_KEYS)
    assert sum(found.breakdown.values()) == found.total_bytes
    assert found.breakdown["cuda_context"] > 0 and found.breakdown["activations"] > 0
    assert found.gb == pytest.approx(found.total_bytes / GB)


def test_cached_components_leave_the_gpu() -> None:
    cached = estimate("sdxl", "lora", BASE).breakdown
    assert cached["weights_vae"] == 0 and cached["weights_text_encoders"] == 0
    live = estimate("sdxl", "lora", {**BASE, "cache_latents": False, "cache_text_encoder_outputs": False}).breakdown
    assert live["weights_vae"] > 0 and live["weights_text_encoders"] > 0


def test_eager_attention_grows_quadratically_with_tokens() -> None:
    def extra(resolution: int) -> int:
        return total(attention="eager", resolution=resolution) - total(attention="sdpa", resolution=resolution)

    # doubling the side quadruples the tokens: the attention matrix grows 16x
    assert extra(1024) > 8 * extra(512)


def test_fits_honours_headroom() -> None:
    found = estimate("sd1", "lora", {"resolution": 512})
    assert found.fits(int(found.total_bytes / 0.9) + 1)
    assert not found.fits(found.total_bytes)
    assert found.fits(found.total_bytes, headroom=0.0)


def test_partial_settings_take_schema_defaults_and_strings_are_coerced() -> None:
    assert estimate("sd1", "lora", {}).total_bytes == estimate("sd1", "lora", None).total_bytes
    assert estimate("sd1", "lora", {"batch_size": "2"}).total_bytes == estimate("sd1", "lora", {"batch_size": 2}).total_bytes


@pytest.mark.parametrize(
    ("args", "message"),
    [(("sd3", "lora", {}), "sd1, sd2, sdxl"), (("sd1", "ppo", {}), "lora"), (("sd1", "lora", {"optimizer": "sgd"}), "optimizer"), (("sd1", "lora", {"batch_size": 0}), "batch_size")],
)
def test_bad_input_is_a_user_error(args: tuple[Any, ...], message: str) -> None:
    with pytest.raises(UserError, match=message):
        estimate(*args)


def test_calibration_point_replaces_the_figure_for_that_setup(user_dirs: Path) -> None:
    shipped = memory_data.CALIBRATION_JSON.read_bytes()
    raw = estimate("sdxl", "lora", BASE)
    assert not raw.calibrated
    record_calibration("sdxl", "lora", BASE, measured_peak_bytes=raw.total_bytes + GB, source="test")
    record_calibration("sdxl", "lora", BASE, measured_peak_bytes=raw.total_bytes + 2 * GB, source="test again")
    path = user_dirs / "data" / "sdtui" / "calibration.json"
    assert len(json.loads(path.read_text())["points"]) == 1
    assert memory_data.CALIBRATION_JSON.read_bytes() == shipped
    calibrated = estimate("sdxl", "lora", BASE)
    assert calibrated.calibrated and calibrated.total_bytes == raw.total_bytes + 2 * GB
    assert calibrated.breakdown["calibration"] == 2 * GB and sum(calibrated.breakdown.values()) == calibrated.total_bytes
    assert not estimate("sdxl", "lora", {**BASE, "batch_size": 2}).calibrated
    assert match_point("sdxl", "lora", {**raw_settings(), "resolution": 512}, 1, "ddp", path) is None


def test_users_point_overrides_the_shipped_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = estimate("sd1", "lora", BASE)
    shipped = tmp_path / "shipped.json"
    record_calibration("sd1", "lora", BASE, measured_peak_bytes=raw.total_bytes + GB, source="shipped", path=shipped)
    record_calibration("sd1", "lora", {**BASE, "batch_size": 2}, measured_peak_bytes=5 * GB, source="shipped b2", path=shipped)
    monkeypatch.setattr(memory_data, "CALIBRATION_JSON", shipped)
    assert estimate("sd1", "lora", BASE).total_bytes == raw.total_bytes + GB
    record_calibration("sd1", "lora", BASE, measured_peak_bytes=raw.total_bytes + 3 * GB, source="mine")
    assert estimate("sd1", "lora", BASE).total_bytes == raw.total_bytes + 3 * GB
    assert estimate("sd1", "lora", {**BASE, "batch_size": 2}).total_bytes == 5 * GB
    assert len(json.loads(shipped.read_text())["points"]) == 2


@pytest.mark.parametrize("content", [b"", b"\xff\xfe", b"[1, 2]", b'{"points": {"a": 1}}', b'{"points": [1, {"family": "sd1"}]}'])
def test_a_broken_user_calibration_file_means_no_points(user_dirs: Path, content: bytes) -> None:
    path = user_dirs / "data" / "sdtui" / "calibration.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    assert not estimate("sd1", "lora", BASE).calibrated
    record_calibration("sd1", "lora", BASE, measured_peak_bytes=4 * GB, source="after the broken file")
    assert estimate("sd1", "lora", BASE).total_bytes == 4 * GB


def raw_settings() -> dict[str, Any]:
    from core.settings import resolve

    return resolve("settings", BASE)


def test_shipped_calibration_file_is_valid() -> None:
    doc = json.loads(memory_data.CALIBRATION_JSON.read_text())
    assert isinstance(doc["points"], list)


def test_imports_without_torch() -> None:
    code = "import sys, core.memory, core.gpu, core.recipes; core.memory.estimate('sdxl', 'lora', {}); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_params_json_matches_meta_device_build_of_configs() -> None:
    pytest.importorskip("diffusers")
    from bench.measure_params import build_meta, describe
    from core.families import spec

    stored = json.loads(memory_data.PARAMS_JSON.read_text())
    for family, component in [("sd1", "unet"), ("sd1", "text_encoder"), ("sd2", "unet"), ("sdxl", "unet"), ("sdxl", "vae")]:
        fresh = describe(family, component, build_meta(family, component, spec(family).component_configs()[component]))
        assert stored["families"][family][component] == fresh, (family, component)
    # the public reference checkpoints' parameter counts
    assert stored["families"]["sd1"]["unet"]["params"] == 859_520_964
    assert stored["families"]["sdxl"]["unet"]["params"] == 2_567_463_684
    assert stored["families"]["sdxl"]["text_encoder_2"]["params"] == 694_659_840


def test_activation_fit_reproduces_its_measured_points() -> None:
    from core.memory.estimator import _poly

    for family, entries in memory_data.activations()["unet"].items():
        for key, fit in entries.items():
            for resolution, row in fit["points"].items():
                tokens = (int(resolution) / 8) ** 2
                assert _poly(fit["saved"], tokens) == pytest.approx(row["saved"], rel=1e-6), (family, key)


@pytest.mark.slow
def test_activation_measurement_of_one_point_matches_the_stored_figure() -> None:
    pytest.importorskip("diffusers")
    from bench.measure_activations import denoiser_activation

    stored = memory_data.activations()["unet"]["sd1"]["lora/half/ckpt/sdpa"]["points"]["512"]
    assert denoiser_activation("sd1", 512, "lora", "half", True, "sdpa") == stored
    stored_xl = memory_data.activations()["unet"]["sdxl"]["lora/half/ckpt/sdpa"]["points"]["1024"]
    assert denoiser_activation("sdxl", 1024, "lora", "half", True, "sdpa") == stored_xl


@pytest.mark.slow
def test_activation_method_predicts_a_real_cpu_peak() -> None:
    pytest.importorskip("diffusers")
    from bench.measure_activations import SMALL_SD1_UNET, denoiser_activation, has_mallinfo2, measured_peak

    if not has_mallinfo2():
        pytest.skip("needs glibc's mallinfo2 to read the CPU peak")
    real, grads = measured_peak("sd1", SMALL_SD1_UNET, 256, "full", False)
    count = denoiser_activation("sd1", 256, "full", "fp32", False, "sdpa", SMALL_SD1_UNET)
    working = count["recompute"] + 2 * count["largest"]
    predicted = max(count["saved"] + working, grads + working)
    assert 0.8 < predicted / real < 1.25


def test_the_estimate_is_within_20_percent_of_every_published_measured_peak() -> None:
    from bench.bench_published_peaks import DATA, compare

    data = json.loads(DATA.read_text())
    assert len(data["measured"]) >= 8
    for source in data["sources"].values():
        assert source["url"].startswith("https://") and source["what"]
    rows = compare()
    measured = [r for r in rows if r.kind == "measured"]
    assert measured and all(r.ok for r in measured), [(r.id, round(r.ratio, 2)) for r in measured if not r.ok]
    assert all(r.ok for r in rows if r.kind == "at most"), [(r.id, round(r.ratio, 2)) for r in rows if r.kind == "at most" and not r.ok]


def test_checkpointing_off_moves_a_paired_dreambooth_estimate_as_the_published_peaks_do() -> None:
    settings = {"mixed_precision": "fp16", "optimizer": "adamw8bit", "batch_size": 1, "resolution": 512, "cache_latents": True, "cache_text_encoder_outputs": True}
    on = estimate("sd1", "dreambooth", {**settings, "gradient_checkpointing": True}, prior_preservation=True)
    off = estimate("sd1", "dreambooth", {**settings, "gradient_checkpointing": False}, prior_preservation=True)
    # published (bench/published_peaks.json): 9.92 → 11.17 GiB
    assert 0.5 * GB < off.total_bytes - on.total_bytes < 1.5 * GB


def test_trained_text_encoders_keep_less_with_checkpointing_as_the_trainer_checkpoints_them() -> None:
    from core.memory.estimator import text_encoder_activations

    full = text_encoder_activations("sdxl", ["text_encoder", "text_encoder_2"], half=True, checkpointing=False)
    checkpointed = text_encoder_activations("sdxl", ["text_encoder", "text_encoder_2"], half=True, checkpointing=True)
    assert full == 43088200 + 162936648  # activations.json: CLIP-L and bigG per caption
    # each layer's input (12 + 32 layers of 77 tokens, fp32) and one layer being recomputed
    assert checkpointed == (12 * 77 * 768 + 32 * 77 * 1280) * 4 + 43088200 // 12 + 162936648 // 32
