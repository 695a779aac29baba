"""FLUX.2's original (Black Forest Labs) layout, which ComfyUI loads, from diffusers names: a key table and the fused projections.

The table is diffusers' ``convert_flux2_transformer_checkpoint_to_diffusers`` read backwards,
written as data: most modules are renamed one to one; a double block's ``to_q``/``to_k``/``to_v``
(and ``add_*_proj``) are one fused ``qkv`` projection in the original layout, and the final
``norm_out.linear`` holds (scale, shift) where the original holds (shift, scale). torch is
imported only where tensors are built.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from core.families.keymaps import KeyMap

#: diffusers module -> original module (``{}`` = a block number), for the modules renamed one to one.
MODULES = KeyMap(
    (
        ("transformer_blocks.{}.attn.to_out.0", "double_blocks.{}.img_attn.proj"),
        ("transformer_blocks.{}.attn.to_add_out", "double_blocks.{}.txt_attn.proj"),
        ("transformer_blocks.{}.attn.norm_q", "double_blocks.{}.img_attn.norm.query_norm"),
        ("transformer_blocks.{}.attn.norm_k", "double_blocks.{}.img_attn.norm.key_norm"),
        ("transformer_blocks.{}.attn.norm_added_q", "double_blocks.{}.txt_attn.norm.query_norm"),
        ("transformer_blocks.{}.attn.norm_added_k", "double_blocks.{}.txt_attn.norm.key_norm"),
        ("transformer_blocks.{}.ff.linear_in", "double_blocks.{}.img_mlp.0"),
        ("transformer_blocks.{}.ff.linear_out", "double_blocks.{}.img_mlp.2"),
        ("transformer_blocks.{}.ff_context.linear_in", "double_blocks.{}.txt_mlp.0"),
        ("transformer_blocks.{}.ff_context.linear_out", "double_blocks.{}.txt_mlp.2"),
        ("single_transformer_blocks.{}.attn.to_qkv_mlp_proj", "single_blocks.{}.linear1"),
        ("single_transformer_blocks.{}.attn.to_out", "single_blocks.{}.linear2"),
        ("single_transformer_blocks.{}.attn.norm_q", "single_blocks.{}.norm.query_norm"),
        ("single_transformer_blocks.{}.attn.norm_k", "single_blocks.{}.norm.key_norm"),
        ("x_embedder", "img_in"),
        ("context_embedder", "txt_in"),
        ("time_guidance_embed.timestep_embedder.linear_1", "time_in.in_layer"),
        ("time_guidance_embed.timestep_embedder.linear_2", "time_in.out_layer"),
        ("time_guidance_embed.guidance_embedder.linear_1", "guidance_in.in_layer"),
        ("time_guidance_embed.guidance_embedder.linear_2", "guidance_in.out_layer"),
        ("double_stream_modulation_img.linear", "double_stream_modulation_img.lin"),
        ("double_stream_modulation_txt.linear", "double_stream_modulation_txt.lin"),
        ("single_stream_modulation.linear", "single_stream_modulation.lin"),
        ("proj_out", "final_layer.linear"),
        ("norm_out.linear", "final_layer.adaLN_modulation.1"),
    )
)

#: Fused projections: diffusers' three modules of a double block -> the original ``qkv`` module.
FUSED: dict[tuple[str, str, str], str] = {
    ("attn.to_q", "attn.to_k", "attn.to_v"): "img_attn.qkv",
    ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"): "txt_attn.qkv",
}

#: The module whose output halves are swapped between the layouts (diffusers: scale, shift).
SWAPPED = "norm_out.linear"


def fused_member(module: str) -> tuple[str, int] | None:
    """``(original fused module, index 0/1/2)`` of a diffusers q/k/v module of a double block, or None."""
    head, _, rest = module.partition(".")
    block, _, inner = rest.partition(".")
    if head != "transformer_blocks" or not block.isdigit():
        return None
    for members, fused in FUSED.items():
        if inner in members:
            return f"double_blocks.{block}.{fused}", members.index(inner)
    return None


def original_module(module: str) -> str:
    """The original name of a diffusers module renamed one to one (ValueError for a fused member)."""
    return MODULES.to_theirs(module)


def swap_halves(tensor: Any) -> Any:
    """The two halves of the first axis exchanged (scale/shift <-> shift/scale)."""
    import torch

    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def to_original(state: Mapping[str, Any]) -> dict[str, Any]:
    """A diffusers ``Flux2Transformer2DModel`` state dict in the original layout (``.scale`` for the norms' weights)."""
    import torch

    out: dict[str, Any] = {}
    fused: dict[str, list[Any]] = {}
    for key, tensor in state.items():
        module, _, param = key.rpartition(".")
        member = fused_member(module)
        if member is not None:
            fused.setdefault(f"{member[0]}.{param}", [None, None, None])[member[1]] = tensor
            continue
        name = original_module(module)
        if module == SWAPPED:
            tensor = swap_halves(tensor)
        out[f"{name}.{'scale' if name.endswith('_norm') else param}"] = tensor
    for key, parts in fused.items():
        out[key] = torch.cat(parts, dim=0)
    return out
