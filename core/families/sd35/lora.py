"""SD 3.5 LoRA files in the layout sd-scripts writes and ComfyUI loads, and back.

sd-scripts' SD3 LoRA (``networks/lora_sd3.py``) adapts the Linear layers of its MMDiT, which
are SAI's modules: ``lora_unet_joint_blocks_N_x_block_attn_qkv`` with q, k and v fused into one
layer, ``…_attn_proj``, ``…_mlp_fc1``, ``…_adaLN_modulation_1``, and the CLIP encoders under
``lora_te1_``/``lora_te2_``. ComfyUI reads ``lora_unet_<module>`` as the SAI weight
``diffusion_model.<module>.weight``.

sdtui trains diffusers' separate q/k/v projections. Their three LoRAs are one exact LoRA of
the fused layer: ``lora_down`` the three downs stacked (rank 3r), ``lora_up`` block-diagonal,
alpha ×3 so that alpha / rank stays the same. Where SAI orders a modulation output (shift,
scale), the up rows are swapped. LoHa and LoKr have no such exact fusion; they are written
under the diffusers module names ComfyUI also maps onto SAI's weights (``lora_transformer_<name>``,
OneTrainer's layout, q/k/v as slices of the fused weight).

A family runtime converts with a *working layout*: :func:`working_base` names each module
(the fused ones as ``<fused base>#<q|k|v index>``), ``core.families.lora_files`` applies the
adapter rules there, and :func:`fuse` / :func:`split` go between it and the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from core.families.sd35 import layout

#: The key prefix of MMDiT modules in sd-scripts' layout, and of diffusers-named ones (OneTrainer's, for LoHa/LoKr).
KOHYA_PREFIX = "lora_unet_"
DIFFUSERS_PREFIX = "lora_transformer_"
_PART = "#"
_LORA = (".lora_down.weight", ".lora_up.weight", ".alpha", ".dora_scale")


def working_base(module: str, kind: str, num_layers: int) -> str:
    """The working-layout key base of one trained MMDiT module (peft's module path)."""
    if kind != "lora":
        return DIFFUSERS_PREFIX + module.replace(".", "_")
    part = layout.fused_part(module)
    if part is not None:
        return f"{KOHYA_PREFIX}{part[0].replace('.', '_')}{_PART}{part[1]}"
    base = KOHYA_PREFIX + layout.MODULES.to_theirs(module).replace(".", "_")
    return base + "!" if layout.swaps_halves(module, num_layers) else base


def fuse(tensors: Mapping[str, Any]) -> dict[str, Any]:
    """Working layout -> file: q/k/v LoRAs fused into one exact LoRA each, swapped modulation rows."""
    import torch

    out: dict[str, Any] = {}
    groups: dict[str, dict[int, dict[str, Any]]] = {}
    for key, tensor in tensors.items():
        base, suffix = _split_key(key)
        if _PART in base:
            fused, index = base.split(_PART)
            groups.setdefault(fused, {}).setdefault(int(index), {})[suffix] = tensor
        elif base.endswith("!"):
            out[base[:-1] + suffix] = layout.swap_halves(tensor) if suffix in (".lora_up.weight", ".dora_scale") else tensor
        else:
            out[key] = tensor
    for fused, parts in groups.items():
        ordered = [parts[i] for i in sorted(parts)]
        out[fused + ".lora_down.weight"] = torch.cat([p[".lora_down.weight"] for p in ordered], dim=0)
        out[fused + ".lora_up.weight"] = torch.block_diag(*[p[".lora_up.weight"] for p in ordered])
        out[fused + ".alpha"] = ordered[0][".alpha"] * len(ordered)
        if ".dora_scale" in ordered[0]:
            out[fused + ".dora_scale"] = torch.cat([p[".dora_scale"] for p in ordered], dim=0)
    return out


def split(tensors: Mapping[str, Any], fused_bases: Mapping[str, int]) -> dict[str, Any]:
    """File -> working layout for the modules ``fused_bases`` (working base -> the adapter's rank) names.

    A fused LoRA of rank 3r (what :func:`fuse` writes) gives each part its block; one of the
    adapter's rank r (sd-scripts' own: one down shared by q, k and v) gives each part the
    shared down and its rows of the up. Alpha is carried so alpha / rank is unchanged.
    """
    import torch

    out = dict(tensors)
    for base, rank in fused_bases.items():
        if base.endswith("!"):
            plain = base[:-1]
            for suffix in (".lora_up.weight", ".dora_scale"):
                if plain + suffix in tensors:
                    out[base + suffix] = layout.swap_halves(tensors[plain + suffix])
            for suffix in (".lora_down.weight", ".alpha"):
                if plain + suffix in tensors:
                    out[base + suffix] = tensors[plain + suffix]
            continue
        if _PART not in base:
            continue
        fused, index_text = base.split(_PART)
        index = int(index_text)
        if fused + ".lora_down.weight" not in tensors:
            continue
        down, up = tensors[fused + ".lora_down.weight"], tensors[fused + ".lora_up.weight"]
        file_rank = int(down.shape[0])
        rows = up.chunk(3, dim=0)[index]
        if file_rank == 3 * rank:
            out[base + ".lora_down.weight"] = down.chunk(3, dim=0)[index]
            out[base + ".lora_up.weight"] = rows.chunk(3, dim=1)[index]
            alpha = tensors.get(fused + ".alpha")
            out[base + ".alpha"] = alpha / 3 if alpha is not None else torch.tensor(float(rank))
        else:
            out[base + ".lora_down.weight"] = down
            out[base + ".lora_up.weight"] = rows
            if fused + ".alpha" in tensors:
                out[base + ".alpha"] = tensors[fused + ".alpha"]
        if fused + ".dora_scale" in tensors:
            out[base + ".dora_scale"] = tensors[fused + ".dora_scale"].chunk(3, dim=0)[index]
    return out


def _split_key(key: str) -> tuple[str, str]:
    for suffix in _LORA:
        if key.endswith(suffix):
            return key[: -len(suffix)], suffix
    base, dot, rest = key.partition(".")
    return base, dot + rest
