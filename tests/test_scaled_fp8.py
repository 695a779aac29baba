"""ComfyUI's scaled-fp8 single files, read by the loader the flow families share (``core/families/scaled_fp8.py``):
each family's tiny single file, written as ComfyUI's ``*_fp8_scaled`` files are, loads to the original weights within
fp8 rounding and is still detected; ``base_precision = "fp8"`` stores the file's own fp8 values again; odd files are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from core.errors import UserError
from core.families import scaled_fp8
from core.families.detect import family_of_file

E4M3_MAX = 448.0


def quantize_like_comfyui(path: Path, marker: bool = True) -> dict[str, float]:
    """Rewrite a single file as ComfyUI's scaled fp8: each 2-D weight as e4m3 with a float32 ``scale_weight``
    (its largest value over 448), a ``scaled_fp8`` marker under the model's prefix; the scales by weight name."""
    with safe_open(str(path), framework="pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118 - safe_open is no mapping
    out: dict[str, torch.Tensor] = {}
    scales: dict[str, float] = {}
    for key, tensor in tensors.items():
        if key.endswith(".weight") and tensor.ndim == 2 and tensor.is_floating_point() and tensor.abs().max() > 0:
            scale = (tensor.float().abs().max() / E4M3_MAX).reshape(())
            out[key] = (tensor.float() / scale).to(torch.float8_e4m3fn)
            out[key.removesuffix(".weight") + ".scale_weight"] = scale
            scales[key] = float(scale)
        else:
            out[key] = tensor
    if marker:
        prefix = "model.diffusion_model." if any(k.startswith("model.diffusion_model.") for k in tensors) else ""
        out[prefix + "scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    save_file({k: v.contiguous() for k, v in out.items()}, str(path))
    return scales


def _close_within_fp8(loaded: torch.Tensor, original: torch.Tensor) -> bool:
    """Within e4m3 rounding of a per-tensor scale: half a step (1/16 of the value), or a subnormal step of the scale."""
    scale = original.float().abs().max() / E4M3_MAX
    return bool(((loaded.float() - original.float()).abs() <= original.float().abs() / 16 + scale / 256 + 1e-7).all())


@pytest.mark.slow
@pytest.mark.parametrize(
    ("family", "name"), [("flux", "flux1-dev"), ("chroma", "chroma"), ("sd35", "sd3.5_medium"), ("flux2", "flux-2-klein-4b"), ("qwenimage", "qwen_image"), ("zimage", "z_image_turbo")]
)
def test_a_scaled_fp8_file_of_each_family_loads_its_weights_within_fp8_rounding(tmp_path, family, name) -> None:
    from core.train.model.loading import load_components
    from core.train.model.quantize import Float8StorageLinear, quantize
    from core.train.model.tiny import build_tiny_single_file

    single = build_tiny_single_file(family, tmp_path / f"{name}_fp8_scaled.safetensors")
    reference = load_components(str(single))
    scales = quantize_like_comfyui(single)
    assert scales and family_of_file(single) == family

    loaded = load_components(str(single))
    assert loaded.family == family
    for got, want in [(loaded.denoiser, reference.denoiser), *zip(loaded.text_encoders, reference.text_encoders)]:
        original = want.state_dict()
        for key, tensor in got.state_dict().items():
            assert tensor.dtype == torch.float32, key
            assert _close_within_fp8(tensor, original[key]), key
    changed = [k for k, v in loaded.denoiser.state_dict().items() if not torch.equal(v, reference.denoiser.state_dict()[k])]
    assert changed, "the weights went through fp8"

    # base_precision = "fp8": the file's own e4m3 values come back with its scale, not a second rounding
    kept = getattr(loaded.denoiser, scaled_fp8.FILE_SCALES)
    assert set(kept.values()) <= set(scales.values())
    before = {k: v.clone() for k, v in loaded.denoiser.state_dict().items()}
    assert quantize(loaded.denoiser, "fp8", lambda layer: False, torch.device("cpu")) > 0
    layers = {n: m for n, m in loaded.denoiser.named_modules() if isinstance(m, Float8StorageLinear) and m.scale != 1.0}
    assert {f"{n}.weight" for n in layers} == set(kept)
    for module_name, layer in layers.items():
        stored = layer.weight.view(torch.float8_e4m3fn).float() * layer.scale
        torch.testing.assert_close(stored, before[f"{module_name}.weight"], rtol=0, atol=0)


def test_the_mixed_precision_layout_reads_the_same_and_other_formats_are_refused() -> None:
    weight = torch.tensor([[1.0, -2.0], [0.5, 4.0]])
    scale = torch.tensor(4.0 / E4M3_MAX)
    quantized = (weight / scale).to(torch.float8_e4m3fn)
    fmt = torch.tensor(list(json.dumps({"format": "float8_e4m3fn"}).encode()), dtype=torch.uint8)
    state = {"a.weight": quantized, "a.weight_scale": scale, "a.input_scale": torch.tensor(1.0), "a.comfy_quant": fmt, "a.bias": torch.ones(2, dtype=torch.bfloat16)}
    found = scaled_fp8.dequantize(state, torch.bfloat16, "x.safetensors")
    assert set(found.tensors) == {"a.weight", "a.bias"} and found.tensors["a.weight"].dtype == torch.bfloat16
    torch.testing.assert_close(found.tensors["a.weight"].float(), weight)
    assert found.scales == {"a.weight": pytest.approx(float(scale))}
    old = scaled_fp8.dequantize({"a.weight": quantized, "a.scale_weight": scale, "a.scale_input": torch.tensor(1.0), "scaled_fp8": torch.zeros(2)}, torch.float32, "x")
    assert set(old.tensors) == {"a.weight"} and torch.equal(old.tensors["a.weight"], found.tensors["a.weight"].float())
    plain = scaled_fp8.dequantize({"a.weight": quantized}, torch.float32, "x")
    assert torch.equal(plain.tensors["a.weight"], quantized.float()) and not plain.scales

    nvfp4 = json.dumps({"layers": {"a": {"format": "nvfp4"}}})
    with pytest.raises(UserError, match=r"^The file f\.safetensors is quantized as nvfp4, which sdtui cannot train on; give the bf16 file"):
        scaled_fp8.dequantize({"a.weight": quantized}, torch.float32, "f.safetensors", {scaled_fp8.METADATA: nvfp4})


def test_a_file_whose_scales_do_not_match_its_weights_is_refused_in_one_sentence(tmp_path) -> None:
    from core.train.model.loading import load_components
    from core.train.model.tiny import build_tiny_single_file

    quantized = torch.ones(4, 2).to(torch.float8_e4m3fn)
    with pytest.raises(UserError, match=r"has a scale b\.scale_weight without the weight b\.weight it scales"):
        scaled_fp8.dequantize({"a.weight": quantized, "b.scale_weight": torch.tensor(0.1)}, torch.float32, "f")
    with pytest.raises(UserError, match=r"scales a\.weight \(shape \(4, 2\)\) by a scale of shape \(3,\), which is neither one value nor one per output row"):
        scaled_fp8.dequantize({"a.weight": quantized, "a.scale_weight": torch.ones(3)}, torch.float32, "f")
    per_row = scaled_fp8.dequantize({"a.weight": quantized, "a.scale_weight": torch.tensor([1.0, 2.0, 3.0, 4.0])}, torch.float32, "f")
    assert per_row.tensors["a.weight"][:, 0].tolist() == [1.0, 2.0, 3.0, 4.0] and not per_row.scales

    single = build_tiny_single_file("flux2", tmp_path / "flux-2-klein-4b.safetensors")
    quantize_like_comfyui(single)
    with safe_open(str(single), framework="pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118 - safe_open is no mapping
    stray = next(k for k in tensors if k.endswith(".scale_weight"))
    tensors[stray.replace("double_blocks.0", "double_blocks.7")] = tensors[stray].clone()
    save_file(tensors, str(single))
    with pytest.raises(UserError) as caught:
        load_components(str(single))
    message = str(caught.value)
    assert "without the weight" in message and "give an unmodified ComfyUI fp8_scaled file or the bf16 one" in message and message.count(". ") == 0


@pytest.mark.slow
def test_a_lora_trains_on_a_scaled_fp8_file_kept_in_fp8(tmp_path, kohya_dataset) -> None:
    from core.train.model.tiny import build_tiny_single_file
    from tests.train_helpers import make_run, metrics, status, train

    single = build_tiny_single_file("flux2", tmp_path / "flux-2-klein-4b_fp8_scaled.safetensors")
    quantize_like_comfyui(single)
    run = make_run(tmp_path / "run", single, kohya_dataset(((1, "sks dog", 2),)), "flux2", "lora", settings={"base_precision": "fp8"}, schedule={"max_steps": 2})
    assert train(run) == 0
    assert status(run)["state"] == "finished" and len(metrics(run, "step")) == 2
    assert any("linear layers stored in fp8" in m["message"] for m in metrics(run, "event"))
