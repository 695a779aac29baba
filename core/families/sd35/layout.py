"""SD 3.5's original (Stability AI) single-file layout, from diffusers names, as tables.

An SAI file (``sd3.5_large.safetensors``, ComfyUI's ``sd3.5_medium_incl_clips_t5xxlfp8.safetensors``)
holds the MMDiT under ``model.diffusion_model.`` with fused q/k/v (``joint_blocks.N.x_block.attn.qkv``),
the VAE under ``first_stage_model.`` and, where included, the text encoders under
``text_encoders.clip_l.transformer.``, ``text_encoders.clip_g.transformer.`` and
``text_encoders.t5xxl.transformer.`` in transformers' own names. Two modulation linears split
into (shift, scale) where diffusers splits (scale, shift): the final layer's and the last
block's text-stream one (that block's text stream is "pre-only").

The same module tables name the kohya LoRA keys (``lora_unet_joint_blocks_N_x_block_attn_qkv``),
so a trained LoRA of diffusers' separate ``to_q``/``to_k``/``to_v`` is written fused as
sd-scripts' SD3 LoRA and ComfyUI read it. torch is imported only where tensors are built.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from core.families.keymaps import KeyMap

#: The MMDiT under this prefix in an SAI file (ComfyUI drops ``model.``).
DENOISER_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."

#: One-to-one modules: diffusers' name -> SAI's, ``{}`` the block number.
MODULES = KeyMap(
    (
        ("transformer_blocks.{}.attn.to_out.0", "joint_blocks.{}.x_block.attn.proj"),
        ("transformer_blocks.{}.attn.to_add_out", "joint_blocks.{}.context_block.attn.proj"),
        ("transformer_blocks.{}.attn.norm_q", "joint_blocks.{}.x_block.attn.ln_q"),
        ("transformer_blocks.{}.attn.norm_k", "joint_blocks.{}.x_block.attn.ln_k"),
        ("transformer_blocks.{}.attn.norm_added_q", "joint_blocks.{}.context_block.attn.ln_q"),
        ("transformer_blocks.{}.attn.norm_added_k", "joint_blocks.{}.context_block.attn.ln_k"),
        ("transformer_blocks.{}.attn2.to_out.0", "joint_blocks.{}.x_block.attn2.proj"),
        ("transformer_blocks.{}.attn2.norm_q", "joint_blocks.{}.x_block.attn2.ln_q"),
        ("transformer_blocks.{}.attn2.norm_k", "joint_blocks.{}.x_block.attn2.ln_k"),
        ("transformer_blocks.{}.norm1.linear", "joint_blocks.{}.x_block.adaLN_modulation.1"),
        ("transformer_blocks.{}.norm1_context.linear", "joint_blocks.{}.context_block.adaLN_modulation.1"),
        ("transformer_blocks.{}.ff.net.0.proj", "joint_blocks.{}.x_block.mlp.fc1"),
        ("transformer_blocks.{}.ff.net.2", "joint_blocks.{}.x_block.mlp.fc2"),
        ("transformer_blocks.{}.ff_context.net.0.proj", "joint_blocks.{}.context_block.mlp.fc1"),
        ("transformer_blocks.{}.ff_context.net.2", "joint_blocks.{}.context_block.mlp.fc2"),
        ("pos_embed.proj", "x_embedder.proj"),
        ("time_text_embed.timestep_embedder.linear_1", "t_embedder.mlp.0"),
        ("time_text_embed.timestep_embedder.linear_2", "t_embedder.mlp.2"),
        ("time_text_embed.text_embedder.linear_1", "y_embedder.mlp.0"),
        ("time_text_embed.text_embedder.linear_2", "y_embedder.mlp.2"),
        ("context_embedder", "context_embedder"),
        ("proj_out", "final_layer.linear"),
        ("norm_out.linear", "final_layer.adaLN_modulation.1"),
    )
)

#: Fused projections: SAI's module <- diffusers' q, k, v modules (concatenated on the output axis in this order).
FUSED: tuple[tuple[str, tuple[str, str, str]], ...] = (
    ("joint_blocks.{}.x_block.attn.qkv", ("transformer_blocks.{}.attn.to_q", "transformer_blocks.{}.attn.to_k", "transformer_blocks.{}.attn.to_v")),
    (
        "joint_blocks.{}.context_block.attn.qkv",
        ("transformer_blocks.{}.attn.add_q_proj", "transformer_blocks.{}.attn.add_k_proj", "transformer_blocks.{}.attn.add_v_proj"),
    ),
    ("joint_blocks.{}.x_block.attn2.qkv", ("transformer_blocks.{}.attn2.to_q", "transformer_blocks.{}.attn2.to_k", "transformer_blocks.{}.attn2.to_v")),
)
#: Each diffusers q/k/v projection: (its index in the fused module, diffusers' name -> SAI's fused module).
_FUSED_PARTS = tuple((index, KeyMap(((part, theirs),))) for theirs, parts in FUSED for index, part in enumerate(parts))
#: Parameters that are no module's (diffusers' name -> SAI's).
PARAMETERS = {"pos_embed.pos_embed": "pos_embed"}


def fused_part(module: str) -> tuple[str, int] | None:
    """``(SAI fused module, index of q/k/v in it)`` of a diffusers projection that SAI fuses, or None."""
    for index, table in _FUSED_PARTS:
        try:
            return table.to_theirs(module), index
        except ValueError:
            continue
    return None


def swaps_halves(module: str, num_layers: int) -> bool:
    """Whether SAI orders this modulation linear's output (shift, scale) where diffusers has (scale, shift)."""
    return module in ("norm_out.linear", f"transformer_blocks.{num_layers - 1}.norm1_context.linear")


def sai_module(module: str) -> str:
    """A diffusers MMDiT module's SAI name (the fused module for q/k/v projections)."""
    part = fused_part(module)
    return part[0] if part is not None else MODULES.to_theirs(module)


def swap_halves(tensor: Any) -> Any:
    """The two halves of a tensor's first axis exchanged (its own inverse)."""
    import torch

    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def transformer_to_original(state: Mapping[str, Any], num_layers: int) -> dict[str, Any]:
    """A diffusers ``SD3Transformer2DModel`` state dict in SAI's layout under :data:`DENOISER_PREFIX`."""
    import torch

    out: dict[str, Any] = {}
    fused: dict[str, dict[int, Any]] = {}
    for key, tensor in state.items():
        if key in PARAMETERS:
            out[DENOISER_PREFIX + PARAMETERS[key]] = tensor
            continue
        module, _, param = key.rpartition(".")
        part = fused_part(module)
        if part is not None:
            fused.setdefault(f"{part[0]}.{param}", {})[part[1]] = tensor
            continue
        out[f"{DENOISER_PREFIX}{MODULES.to_theirs(module)}.{param}"] = swap_halves(tensor) if swaps_halves(module, num_layers) else tensor
    for name, parts in fused.items():
        out[DENOISER_PREFIX + name] = torch.cat([parts[0], parts[1], parts[2]], dim=0)
    return out


def text_encoder_to_original(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """A transformers text encoder's state dict under ``prefix`` in its own names (SAI files keep
    them; the weights tied to T5's ``shared`` embedding are written as their own copy)."""
    return {prefix + key: tensor.clone() if key == "encoder.embed_tokens.weight" else tensor for key, tensor in state.items()}
