"""Quantized storage of a frozen base component (``settings.base_precision``, ``text_encoder_precision``).

Only ``nn.Linear`` layers are quantized, and not those the family spec keeps in the compute
precision (``FamilySpec.high_precision``: norms, embeddings, modulation). Each precision comes
from a maintained library, except plain fp8 storage, which is a cast:

- ``fp8``: the weight stored as float8 e4m3 (1 byte), upcast to the compute dtype for each
  matmul (:class:`Float8StorageLinear`); what sd-scripts' ``--fp8_base`` does. The bytes are held
  as ``uint8`` so that nothing casts them as a float dtype (``module.to(dtype)``, or peft, which
  would give the LoRA weights it adds the base weight's float dtype). A weight read from a
  ComfyUI scaled-fp8 file keeps that file's fp8 values and per-tensor scale (the loader leaves
  them on the module, ``core.families.scaled_fp8.FILE_SCALES``) instead of a plain
  cast, which would lose the small weights the scale was there for.
- ``fp8_scaled``: torchao's float8 weight-only tensor with one scale per output row (finer than
  the per-tensor scale of ComfyUI's fp8-scaled files), dequantized for the matmul.
- ``int8``: torchao's int8 weight-only tensor (a scale per row).
- ``nf4``: bitsandbytes' ``Linear4bit`` (4-bit NormalFloat, a scale per 64 weights).

Each is weight-only: the matmul runs in the compute dtype on every GPU, so a GPU without fp8
compute (before Ada) loses nothing (:data:`core.settings.FP8_WEIGHT_ONLY_NOTE`, which the plan can say too). peft puts LoRA layers on all of them
(QLoRA); the trained adapters are plain tensors and load on an unquantized base.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from core.families.scaled_fp8 import FILE_SCALES
from core.settings import QUANTIZED_PRECISIONS


def _upcast(weight: torch.Tensor, scale: float, dtype: torch.dtype) -> torch.Tensor:
    """e4m3 bytes as ``dtype`` values, times their per-tensor scale."""
    values = weight.view(torch.float8_e4m3fn).to(dtype)
    return values if scale == 1.0 else values * scale


class _UpcastLinear(torch.autograd.Function):
    """``x @ (scale · upcast(w)).T + b`` for e4m3 bytes ``w``; saves the 1-byte weight for backward, not its upcast copy."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, scale: float) -> torch.Tensor:
        ctx.save_for_backward(weight)
        ctx.scale = scale
        return nn.functional.linear(x, _upcast(weight, scale, x.dtype), None if bias is None else bias.to(x.dtype))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        (weight,) = ctx.saved_tensors
        return (grad @ _upcast(weight, ctx.scale, grad.dtype) if ctx.needs_input_grad[0] else None), None, None, None


class Float8StorageLinear(nn.Linear):
    """A frozen linear layer whose weight is stored as float8 e4m3 bytes (times a per-tensor ``scale``) and upcast to the input's dtype per call."""

    #: The weight is ``scale`` times the stored e4m3 values (1.0 for a plain cast; a ComfyUI scaled-fp8 file's own scale).
    scale: float = 1.0

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return _UpcastLinear.apply(input, self.weight, self.bias, self.scale)

    @classmethod
    def from_linear(cls, linear: nn.Linear, scale: float = 1.0) -> Float8StorageLinear:
        """The layer with ``linear``'s weights, the weight divided by ``scale`` and cast to e4m3 (its bias keeps its dtype).

        With the scale a scaled-fp8 file had, the weight it was dequantized to gives back that file's e4m3 values."""
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        stored = linear.weight.detach() if scale == 1.0 else linear.weight.detach().float() / scale
        layer.weight = nn.Parameter(stored.to(torch.float8_e4m3fn).view(torch.uint8), requires_grad=False)
        layer.scale = float(scale)
        if linear.bias is not None:
            layer.bias = nn.Parameter(linear.bias.detach(), requires_grad=False)
        return layer


def _nf4(linear: nn.Linear, device: torch.device) -> nn.Module:
    import bitsandbytes as bnb

    layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None, compute_dtype=linear.weight.dtype, quant_type="nf4", device="meta")
    layer.weight = bnb.nn.Params4bit(linear.weight.detach().to("cpu"), requires_grad=False, quant_type="nf4")
    if linear.bias is not None:
        layer.bias = nn.Parameter(linear.bias.detach(), requires_grad=False)
    return layer.to(device)  # Params4bit quantizes on its first move


def _torchao_config(precision: str) -> Any:
    from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig, PerRow

    if precision == "int8":
        return Int8WeightOnlyConfig(granularity=PerRow())
    return Float8WeightOnlyConfig(granularity=PerRow())


def quantizable(module: nn.Module, keep: Callable[[str], bool]) -> list[str]:
    """The names of the linear layers of ``module`` that a quantized precision replaces (not those ``keep`` names)."""
    return [name for name, child in module.named_modules() if type(child) is nn.Linear and not keep(name)]


def quantize(module: nn.Module, precision: str, keep: Callable[[str], bool], device: torch.device) -> int:
    """Store ``module``'s linear layers (except those ``keep`` names) in ``precision``, in place; how many.

    ``precision`` is one of :data:`core.settings.QUANTIZED_PRECISIONS` (others change nothing).
    The compute dtype is each layer's dtype before; nf4 layers end on ``device`` (bitsandbytes
    quantizes on the move), the others stay where they are. ``fp8`` layers whose weight came from
    a scaled-fp8 file keep that file's scale (:data:`~core.families.scaled_fp8.FILE_SCALES`).
    """
    if precision not in QUANTIZED_PRECISIONS:
        return 0
    names = quantizable(module, keep)
    scales: dict[str, float] = getattr(module, FILE_SCALES, {})
    if precision in ("fp8_scaled", "int8"):
        from torchao.quantization import quantize_

        chosen = set(names)
        quantize_(module, _torchao_config(precision), filter_fn=lambda _, name: name in chosen)
        return len(names)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        linear = getattr(parent, child)
        setattr(parent, child, _nf4(linear, device) if precision == "nf4" else Float8StorageLinear.from_linear(linear, scales.get(f"{name}.weight", 1.0)))
    return len(names)


def quantized_bytes(module: nn.Module) -> int:
    """Bytes the parameters of ``module`` take as stored (quantized tensors count their payload and scales)."""
    total = 0
    for param in module.parameters():
        inner = [getattr(param, name) for name in getattr(param, "__tensor_flatten__", lambda: ([], None))()[0]]
        tensors = [t for t in inner if isinstance(t, torch.Tensor)] or [param]
        total += sum(t.numel() * t.element_size() for t in tensors)
    return total
