"""FLUX.1's original (Black Forest Labs) layout and diffusers', both ways, as tables; Chroma shares it.

The BFL layout (``flux1-dev.safetensors``, what ComfyUI loads and sd-scripts names LoRA keys
after) fuses modules diffusers keeps apart: a double block's ``img_attn.qkv`` is diffusers'
``attn.to_q``, ``to_k``, ``to_v`` stacked on the output axis, ``txt_attn.qkv`` the ``add_*_proj``,
a single block's ``linear1`` is ``to_q``, ``to_k``, ``to_v`` and ``proj_mlp``. The final layer's
modulation is (shift, scale) in BFL and (scale, shift) in diffusers. RMSNorm gains are ``.scale``
in BFL and ``.weight`` in diffusers. Sources: black-forest-labs/flux ``src/flux/model.py`` (module
names), diffusers ``convert_flux_transformer_checkpoint_to_diffusers`` and ComfyUI
``comfy/utils.py flux_to_diffusers`` (the same correspondence). Torch is imported inside.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: A double block's BFL modules -> the diffusers modules (under ``transformer_blocks.N.``) fused into each.
DOUBLE: dict[str, tuple[str, ...]] = {
    "img_mod.lin": ("norm1.linear",),
    "txt_mod.lin": ("norm1_context.linear",),
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "img_attn.proj": ("attn.to_out.0",),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "txt_attn.proj": ("attn.to_add_out",),
    "img_mlp.0": ("ff.net.0.proj",),
    "img_mlp.2": ("ff.net.2",),
    "txt_mlp.0": ("ff_context.net.0.proj",),
    "txt_mlp.2": ("ff_context.net.2",),
}
#: A single block's BFL modules -> the diffusers modules (under ``single_transformer_blocks.N.``).
SINGLE: dict[str, tuple[str, ...]] = {
    "modulation.lin": ("norm.linear",),
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
    "linear2": ("proj_out",),
}
#: RMSNorm gains: BFL ``<name>.scale`` <-> diffusers ``<name>.weight``.
DOUBLE_NORMS = {
    "img_attn.norm.query_norm": "attn.norm_q",
    "img_attn.norm.key_norm": "attn.norm_k",
    "txt_attn.norm.query_norm": "attn.norm_added_q",
    "txt_attn.norm.key_norm": "attn.norm_added_k",
}
SINGLE_NORMS = {"norm.query_norm": "attn.norm_q", "norm.key_norm": "attn.norm_k"}
#: FLUX.1's modules outside the blocks (``guidance_in`` only where the model embeds guidance).
FLUX_GLOBAL: dict[str, str] = {
    "img_in": "x_embedder",
    "txt_in": "context_embedder",
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
    "final_layer.linear": "proj_out",
    "final_layer.adaLN_modulation.1": "norm_out.linear",
}
#: The BFL module whose weight halves are swapped against diffusers' (shift, scale) <-> (scale, shift).
SWAPPED = "final_layer.adaLN_modulation.1"


def part_sizes(config: Mapping[str, Any], diffusers_name: str) -> int:
    """Output features of one diffusers module that is part of a fused BFL module (q/k/v: the inner width; the MLP: 4×)."""
    inner = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
    return 4 * inner if diffusers_name.endswith("proj_mlp") else inner


def module_table(config: Mapping[str, Any], global_modules: Mapping[str, str]) -> dict[str, tuple[str, ...]]:
    """Every BFL linear module of a model -> its diffusers modules (full names), blocks numbered from the config."""
    table: dict[str, tuple[str, ...]] = {bfl: (ours,) for bfl, ours in global_modules.items()}
    for n in range(int(config["num_layers"])):
        table.update({f"double_blocks.{n}.{bfl}": tuple(f"transformer_blocks.{n}.{d}" for d in ours) for bfl, ours in DOUBLE.items()})
    for n in range(int(config["num_single_layers"])):
        table.update({f"single_blocks.{n}.{bfl}": tuple(f"single_transformer_blocks.{n}.{d}" for d in ours) for bfl, ours in SINGLE.items()})
    return table


def norm_table(config: Mapping[str, Any]) -> dict[str, str]:
    """Every BFL RMSNorm gain -> its diffusers parameter (full names, ``.scale`` / ``.weight``)."""
    table: dict[str, str] = {}
    for n in range(int(config["num_layers"])):
        table.update({f"double_blocks.{n}.{bfl}.scale": f"transformer_blocks.{n}.{d}.weight" for bfl, d in DOUBLE_NORMS.items()})
    for n in range(int(config["num_single_layers"])):
        table.update({f"single_blocks.{n}.{bfl}.scale": f"single_transformer_blocks.{n}.{d}.weight" for bfl, d in SINGLE_NORMS.items()})
    return table


def swap_halves(tensor: Any) -> Any:
    """The two halves of the output axis exchanged (the final modulation's (shift, scale) <-> (scale, shift))."""
    import torch

    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def to_original(state: Mapping[str, Any], config: Mapping[str, Any], global_modules: Mapping[str, str], extra: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A diffusers transformer state dict in the BFL layout (every tensor placed; ValueError naming one left over)."""
    import torch

    out: dict[str, Any] = {}
    used: set[str] = set()
    for bfl, parts in module_table(config, global_modules).items():
        for kind in ("weight", "bias"):
            keys = [f"{p}.{kind}" for p in parts]
            if not all(k in state for k in keys):
                continue
            tensor = torch.cat([state[k] for k in keys], dim=0)
            out[f"{bfl}.{kind}"] = swap_halves(tensor) if bfl == SWAPPED else tensor
            used.update(keys)
    for table in (norm_table(config), dict(extra or {})):
        for bfl, ours in table.items():
            if ours in state:
                out[bfl] = state[ours]
                used.add(ours)
    left = sorted(set(state) - used)
    if left:
        raise ValueError(f"no BFL name for the transformer weight {left[0]}")
    return out


def to_diffusers(state: Mapping[str, Any], config: Mapping[str, Any], global_modules: Mapping[str, str], extra: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A BFL state dict (prefix already removed) in diffusers' names: fused modules split by the config's widths."""
    out: dict[str, Any] = {}
    for bfl, parts in module_table(config, global_modules).items():
        for kind in ("weight", "bias"):
            tensor = state.get(f"{bfl}.{kind}")
            if tensor is None:
                continue
            if bfl == SWAPPED:
                tensor = swap_halves(tensor)
            sizes = [part_sizes(config, p) for p in parts] if len(parts) > 1 else [tensor.shape[0]]
            for part, piece in zip(parts, tensor.split(sizes, dim=0)):
                out[f"{part}.{kind}"] = piece
    for table in (norm_table(config), dict(extra or {})):
        for bfl, ours in table.items():
            if bfl in state:
                out[ours] = state[bfl]
    return out


#: The prefixes single files put before the transformer's BFL keys (ComfyUI's full checkpoints).
PREFIXES = ("model.diffusion_model.", "diffusion_model.")


def strip_prefix(state: Mapping[str, Any]) -> dict[str, Any]:
    """The transformer's keys of a BFL file without a checkpoint prefix (other parts of a full checkpoint dropped)."""
    for prefix in PREFIXES:
        if any(k.startswith(prefix) for k in state):
            return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return dict(state)
