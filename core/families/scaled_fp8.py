"""ComfyUI's fp8 files, read the same way for every family: plain fp8 weights upcast, "scaled fp8" weights multiplied by their scale.

The layouts, from ComfyUI's ``comfy/utils.py`` (``convert_old_quants``), ``comfy/ops.py`` and
``comfy/quant_ops.py`` (``QUANT_ALGOS``):

* **scaled fp8** (ComfyUI's ``*_fp8_scaled.safetensors``, e.g. ``flux_dev_fp8_scaled``): a
  ``float8_e4m3fn`` ``<layer>.weight`` with a float32 per-tensor ``<layer>.scale_weight`` beside
  it (the real weight is ``weight * scale_weight``), sometimes a ``<layer>.scale_input`` (an
  activation scale for fp8 matmuls, not a weight), and one marker tensor ``<prefix>scaled_fp8``
  whose dtype is the fp8 format (float32 meaning e4m3). Layers kept in bf16 (norms, embedders)
  have no scale.
* **mixed precision** (the newer files): ``<layer>.weight_scale`` / ``<layer>.input_scale``, and
  the format of each quantized layer in a ``<layer>.comfy_quant`` tensor (JSON as uint8 bytes) or
  in the file's ``_quantization_metadata`` header entry. The per-tensor fp8 formats
  (``float8_e4m3fn``, ``float8_e5m2``) are read; block-scaled or packed ones (``nvfp4``,
  ``mxfp8``, ``int8_tensorwise``) are refused in one sentence.
* **plain fp8**: fp8 weights without any scale (a cast of the bf16 file), upcast as they are.

:func:`dequantize` turns any of them into plain tensors of the compute dtype and says which
weights had a scale; :func:`converted_scales` follows those scales through a family's key
conversion (renames, q/k/v splits), so that ``settings.base_precision = "fp8"`` can store the
file's own fp8 values with their scale again (:data:`FILE_SCALES`, read by
``core/train/model/quantize.py``) instead of casting the dequantized weights to fp8 without one.
Torch is imported inside the functions.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.families.loading import ModelLoadError

#: The marker tensor of a scaled-fp8 file (``<prefix>scaled_fp8``).
MARKER = "scaled_fp8"
#: A weight's per-tensor scale beside it: the old name, then the mixed-precision one.
WEIGHT_SCALES = ("scale_weight", "weight_scale")
#: Activation scales (for fp8 matmuls) and the per-layer format; no weight of their own.
AUXILIARY = ("scale_input", "input_scale", "comfy_quant")
#: The safetensors header entry of the mixed-precision files (the formats per layer).
METADATA = "_quantization_metadata"
#: The ComfyUI formats with one scale per tensor, which :func:`dequantize` reads.
PER_TENSOR_FORMATS = ("float8_e4m3fn", "float8_e5m2")
#: The attribute a loaded module carries: weight name (the module's own) -> the file's per-tensor scale.
FILE_SCALES = "fp8_file_scales"


@dataclass
class Dequantized:
    """A file's tensors in the compute dtype, and the per-tensor scale of each weight that had one (same keys)."""

    tensors: dict[str, Any]
    scales: dict[str, float] = field(default_factory=dict)


def read(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """A safetensors file's tensors and header metadata (which mixed-precision files use)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata() or {})
        return {key: handle.get_tensor(key) for key in handle.keys()}, metadata  # noqa: SIM118 - safe_open is no mapping


def is_fp8(tensor: Any) -> bool:
    """Whether ``tensor`` is stored in one of torch's float8 dtypes."""
    return "float8" in str(tensor.dtype)


def layer_formats(state: Mapping[str, Any], metadata: Mapping[str, str]) -> dict[str, str]:
    """The quantization format of each layer a mixed-precision file names (``comfy_quant`` tensors and the header)."""
    formats: dict[str, str] = {}
    if metadata.get(METADATA):
        for layer, conf in dict(json.loads(metadata[METADATA]).get("layers", {})).items():
            formats[layer] = str(conf.get("format", "") if isinstance(conf, dict) else conf)
    for key, tensor in state.items():
        if key.endswith(".comfy_quant"):
            conf = json.loads(bytes(tensor.tolist()).decode("utf-8"))
            formats[key.removesuffix(".comfy_quant")] = str(conf.get("format", ""))
    return formats


def dequantize(state: Mapping[str, Any], dtype: Any, where: str, metadata: Mapping[str, str] | None = None) -> Dequantized:
    """Every tensor of a file, fp8 ones upcast to ``dtype`` (multiplied by their scale where the file has one), markers dropped.

    ``where`` names the file in the error sentences: a ModelLoadError for a scale without its weight,
    a scale that is not one value per tensor (or per output row), or a layer format that is not per-tensor fp8.
    """
    formats = layer_formats(state, metadata or {})
    odd = sorted({f for f in formats.values() if f not in PER_TENSOR_FORMATS})
    if odd:
        raise ModelLoadError(f'The file {where} is quantized as {", ".join(odd)}, which sdtui cannot train on; give the bf16 file or a per-tensor fp8 ("fp8_scaled") one of the model.')
    out = Dequantized({})
    for key, tensor in state.items():
        module, _, leaf = key.rpartition(".")
        if key == MARKER or leaf == MARKER or leaf in AUXILIARY:
            continue
        if leaf in WEIGHT_SCALES:
            if f"{module}.weight" not in state:
                raise ModelLoadError(f"The file {where} has a scale {key} without the weight {module}.weight it scales; give an unmodified ComfyUI fp8_scaled file or the bf16 one.")
            continue
        scale = next((state[f"{module}.{s}"] for s in WEIGHT_SCALES if leaf == "weight" and f"{module}.{s}" in state), None)
        if scale is None:
            out.tensors[key] = tensor.to(dtype) if is_fp8(tensor) else tensor
            continue
        if scale.numel() != 1 and (scale.numel() != tensor.shape[0] or tensor.ndim < 2):
            raise ModelLoadError(
                f"The file {where} scales {key} (shape {tuple(tensor.shape)}) by a scale of shape {tuple(scale.shape)}, which is neither one value nor one per output row; "
                "give an unmodified ComfyUI fp8_scaled file or the bf16 one."
            )
        factor = scale.float().reshape(-1, *([1] * (tensor.ndim - 1)))
        out.tensors[key] = (tensor.float() * factor).to(dtype)
        if scale.numel() == 1:
            out.scales[key] = float(scale.float().item())
    return out


def converted_scales(found: Dequantized, convert: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, float]:
    """The per-tensor scales under the names ``convert`` gives the weights (a family's renames, q/k/v splits).

    ``convert`` runs over views that hold each weight's scale (0 for one without), which cost no
    memory; a converted weight whose values all share one scale keeps it, one joined from
    differently scaled tensors has none (it is stored like any other weight)."""
    import torch

    if not found.scales:
        return {}
    zero = torch.zeros(())
    views = {k: (torch.tensor(found.scales[k]) if k in found.scales else zero).expand(v.shape) for k, v in found.tensors.items()}
    out: dict[str, float] = {}
    for key, view in convert(views).items():
        if view.numel() == 0:
            continue
        first = float(view.reshape(-1)[0])
        uniform = all(s == 0 for s in view.stride()) or bool((view == first).all())
        if first > 0 and uniform:
            out[key] = first
    return out


def mark(module: Any, scales: Mapping[str, float]) -> Any:
    """``module`` carrying the file's per-tensor fp8 scales of its weights (:data:`FILE_SCALES`); returns it."""
    if scales:
        setattr(module, FILE_SCALES, dict(scales))
    return module
