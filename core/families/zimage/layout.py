"""Z-Image's original single-file layout (Tongyi-MAI's release, ComfyUI's ``z_image_turbo_bf16.safetensors``) <-> diffusers' names.

The original transformer fuses each attention's q, k and v into ``attention.qkv`` (q, k, v
stacked on the output axis), names the output projection ``attention.out`` and the q/k norms
``q_norm``/``k_norm``, and has one ``x_embedder`` and ``final_layer`` where diffusers keeps a
dict per patch size (``all_x_embedder.2-1``); every other name is the same (diffusers'
``convert_z_image_transformer_checkpoint_to_diffusers`` and ComfyUI's ``z_image_to_diffusers``
read the same table). The key table is data (:data:`NAMES`), used both ways.

ComfyUI's fp8 and scaled-fp8 files are dequantized before these renames by the loader every
flow family shares (``core/families/scaled_fp8.py``); the text encoder's file
(``qwen_3_4b.safetensors``) is Qwen3's causal-LM state dict, whose inner model is the
``Qwen3Model`` Z-Image uses. Torch is imported inside the functions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from core.families.keymaps import KeyMap

#: diffusers' names (ours) <-> the original layout's (theirs); q/k/v fusion is :func:`to_original`'s.
NAMES = KeyMap(
    (
        ("all_x_embedder.2-1.{*}", "x_embedder.{*}"),
        ("all_final_layer.2-1.{*}", "final_layer.{*}"),
        ("{}.{}.attention.to_out.0.{}", "{}.{}.attention.out.{}"),
        ("{}.{}.attention.norm_q.weight", "{}.{}.attention.q_norm.weight"),
        ("{}.{}.attention.norm_k.weight", "{}.{}.attention.k_norm.weight"),
        ("{*}", "{*}"),
    )
)
#: The fused attention input of the original layout and the diffusers projections it holds, in order.
QKV = (".attention.qkv.", (".attention.to_q.", ".attention.to_k.", ".attention.to_v."))
#: Keys of the original layout with no diffusers weight (the unused final norm).
DROPPED = ("norm_final.weight",)


def strip_prefix(state: Mapping[str, Any], prefixes: tuple[str, ...]) -> dict[str, Any]:
    """The state dict without the first of ``prefixes`` it uses (keys outside it dropped)."""
    for prefix in prefixes:
        if any(k.startswith(prefix) for k in state):
            return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return dict(state)


def to_diffusers(state: Mapping[str, Any]) -> dict[str, Any]:
    """An original-layout transformer state dict (prefix removed, fp8 dequantized) in diffusers' names."""
    out: dict[str, Any] = {}
    for key, tensor in state.items():
        fused, parts = QKV
        if key in DROPPED:
            continue
        if fused in key:
            for part, chunk in zip(parts, tensor.chunk(3, dim=0)):
                out[key.replace(fused, part)] = chunk
        else:
            out[NAMES.to_ours(key)] = tensor
    return out


def to_original(state: Mapping[str, Any]) -> dict[str, Any]:
    """A diffusers transformer state dict in the original layout (q, k, v fused), as ComfyUI loads it."""
    import torch

    fused, parts = QKV
    out: dict[str, Any] = {}
    for key, tensor in state.items():
        if parts[0] in key:
            out[key.replace(parts[0], fused)] = torch.cat([state[key.replace(parts[0], p)] for p in parts], dim=0)
        elif not any(p in key for p in parts[1:]):
            out[NAMES.to_theirs(key)] = tensor
    return out


def text_encoder_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """A Qwen3 text-encoder file (ComfyUI's causal-LM state dict, ``model.``-prefixed, fp8 dequantized) as ``Qwen3Model`` weights."""
    return strip_prefix({k: v for k, v in state.items() if not k.startswith("lm_head.")}, ("model.",))
