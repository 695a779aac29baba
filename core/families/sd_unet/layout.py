"""The original single-file layouts (CompVis LDM / Stability SGM) of SD-UNet family weights, from diffusers names.

diffusers only converts the other way, so the mapping is written here, as tables; this is what
A1111, ComfyUI, kohya and diffusers' ``from_single_file`` read. torch is imported only where
tensors are built.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

_UNET_TOP = {
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
}
_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_BLOCK = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions)\.(\d+)(?:\.(.*))?$")
_SAMPLER = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.(downsamplers|upsamplers)\.0\.conv(?:\.(.*))?$")
_MID = re.compile(r"^mid_block\.(resnets|attentions)\.(\d+)(?:\.(.*))?$")


def _join(*parts: str | None) -> str:
    return ".".join(p for p in parts if p)


def _resnet_inner(rest: str | None) -> str | None:
    if not rest:
        return rest
    head, _, tail = rest.partition(".")
    return _join(_UNET_RESNET.get(head, head), tail)


def unet_module_name(name: str, config: Mapping[str, Any]) -> str:
    """A diffusers UNet module/parameter path in the original LDM/SGM naming (without ``model.diffusion_model.``)."""
    per_level = int(config["layers_per_block"] if not isinstance(config["layers_per_block"], (list, tuple)) else config["layers_per_block"][0]) + 1
    for diffusers_name, original in _UNET_TOP.items():
        if name == diffusers_name or name.startswith(diffusers_name + "."):
            return original + name[len(diffusers_name) :]
    match = _BLOCK.match(name)
    if match:
        side, level, kind, index, rest = match.groups()
        level, index = int(level), int(index)
        block = 1 + level * per_level + index if side == "down_blocks" else level * per_level + index
        group = "input_blocks" if side == "down_blocks" else "output_blocks"
        if kind == "resnets":
            return _join(f"{group}.{block}.0", _resnet_inner(rest))
        return _join(f"{group}.{block}.1", rest)
    match = _SAMPLER.match(name)
    if match:
        side, level, _, rest = match.groups()
        level = int(level)
        if side == "down_blocks":
            return _join(f"input_blocks.{(level + 1) * per_level}.0.op", rest)
        has_attention = str(config["up_block_types"][level]).startswith("CrossAttn")
        return _join(f"output_blocks.{level * per_level + per_level - 1}.{2 if has_attention else 1}.conv", rest)
    match = _MID.match(name)
    if match:
        kind, index, rest = match.groups()
        if kind == "attentions":
            return _join("middle_block.1", rest)
        return _join(f"middle_block.{0 if int(index) == 0 else 2}", _resnet_inner(rest))
    raise ValueError(f"no original-layout name for the UNet module {name}")


def vae_to_original(state: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """A diffusers AutoencoderKL state dict in the original ``first_stage_model.`` layout."""
    levels = len(config["up_block_types"])
    out: dict[str, Any] = {}
    for key, tensor in state.items():
        new = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        new = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", new)
        new = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", new)
        new = re.sub(r"^decoder\.up_blocks\.(\d+)\.resnets\.", lambda m: f"decoder.up.{levels - 1 - int(m.group(1))}.block.", new)
        new = re.sub(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"decoder.up.{levels - 1 - int(m.group(1))}.upsample.", new)
        new = re.sub(r"mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m.group(1)) + 1}.", new)
        if ".mid_block.attentions.0." in new:
            new = new.replace("mid_block.attentions.0.", "mid.attn_1.")
            for old, ldm in (("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."), ("to_out.0.", "proj_out.")):
                new = new.replace("attn_1." + old, "attn_1." + ldm)
            if tensor.ndim == 2:
                tensor = tensor[:, :, None, None]
        out["first_stage_model." + new] = tensor
    return out


def clip_to_original(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """A transformers CLIP text encoder state dict under ``prefix`` with the ``text_model.`` names."""
    return {prefix + (k if k.startswith("text_model.") else f"text_model.{k}"): v for k, v in state.items()}


_OPEN_CLIP = (
    ("embeddings.token_embedding.weight", "token_embedding.weight"),
    ("embeddings.position_embedding.weight", "positional_embedding"),
    ("final_layer_norm.", "ln_final."),
    ("encoder.layers.", "transformer.resblocks."),
    (".self_attn.out_proj.", ".attn.out_proj."),
    (".layer_norm1.", ".ln_1."),
    (".layer_norm2.", ".ln_2."),
    (".mlp.fc1.", ".mlp.c_fc."),
    (".mlp.fc2.", ".mlp.c_proj."),
)


def open_clip_to_original(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """A transformers CLIP text encoder state dict in OpenCLIP's layout (fused ``in_proj``) under ``prefix``."""
    import torch

    out: dict[str, Any] = {}
    qkv: dict[str, dict[str, Any]] = {}
    for key, tensor in state.items():
        name = key.removeprefix("text_model.")
        if name == "text_projection.weight":
            out[prefix + "text_projection"] = tensor.T.contiguous()
            continue
        match = re.match(r"^encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$", name)
        if match:
            layer, which, kind = match.groups()
            qkv.setdefault(f"transformer.resblocks.{layer}.attn.in_proj_{kind}", {})[which] = tensor
            continue
        for old, new in _OPEN_CLIP:
            name = name.replace(old, new)
        out[prefix + name] = tensor
    for name, parts in qkv.items():
        out[prefix + name] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


#: The converters of a text encoder's state dict, by the spec's ``original_layout``.
TEXT_ENCODER_LAYOUTS = {"clip": clip_to_original, "open_clip": open_clip_to_original}


def to_original(unet: Any, vae: Any, text_encoders: Sequence[Any], encoder_specs: Sequence[Any]) -> dict[str, Any]:
    """The model's weights as one state dict in the original single-file layout.

    The UNet under ``model.diffusion_model.``, the VAE under ``first_stage_model.`` and each
    text encoder under its spec's ``original_prefix`` in its ``original_layout`` (CLIP's
    ``text_model.`` names, or OpenCLIP's with the fused ``in_proj`` and the projection).
    """
    unet_config = dict(unet.config)
    out: dict[str, Any] = {}
    for key, tensor in unet.state_dict().items():
        module, _, param = key.rpartition(".")
        out["model.diffusion_model." + _join(unet_module_name(module, unet_config), param)] = tensor
    out.update(vae_to_original(vae.state_dict(), dict(vae.config)))
    for encoder, te in zip(text_encoders, encoder_specs):
        out.update(TEXT_ENCODER_LAYOUTS[te.original_layout](encoder.state_dict(), te.original_prefix))
    return out
