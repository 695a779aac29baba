"""FLUX.2 LoRA files in the layout ComfyUI loads: ``diffusion_model.<original module>`` keys, the double blocks' q/k/v fused.

ComfyUI's key map (``comfy/lora.py`` ``model_lora_keys_unet``) maps ``diffusion_model.<module>`` and
``lora_unet_<module_with_underscores>`` to the model's original weights; FLUX.2's are the Black
Forest Labs names (``layout.py``). The double blocks' ``qkv`` is one weight there but three modules
in diffusers (and so in peft), so their adapters are fused exactly:

* LoRA: ``down = [A_q; A_k; A_v]`` (rank 3r) and ``up = diag(B_q, B_k, B_v)``, each block scaled by
  its own alpha / rank and the fused alpha set to the fused rank (scale 1) — the product is the
  three deltas stacked; DoRA's magnitudes (per output row) are stacked likewise;
* LoHa / LoKr, whose factors cannot be stacked: the fused delta weight as ComfyUI's ``.diff``.

Reading a file back splits a fused LoRA the same way (a block-diagonal one of rank 3r, or one
whose ``down`` the three share, as other trainers write it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from core.families import lora_files
from core.families.flux2 import layout
from core.families.keymaps import split_suffix
from core.families.protocol import AdapterWeights

if TYPE_CHECKING:
    from torch import Tensor

PREFIX = "diffusion_model."


def module_base(name: str) -> str:
    """The ComfyUI key base of a module adapted one to one."""
    return PREFIX + layout.original_module(name)


def comfy_state_dict(adapters: Sequence[AdapterWeights], denoiser: str) -> dict[str, Tensor]:
    """Every denoiser adapter in ComfyUI's layout: one-to-one modules through the generic rules, fused q/k/v here."""
    out: dict[str, Tensor] = {}
    for adapter in adapters:
        if adapter.component != denoiser:
            raise ValueError(f"FLUX.2 LoRA files hold only the transformer, not {adapter.component}")
        plain = {k: v for k, v in adapter.state.items() if layout.fused_member(_module_of(k, adapter)) is None}
        out.update(lora_files.kohya_state_dict([AdapterWeights(adapter.component, plain, adapter.config)], lambda _c, name: module_base(name)))
        out.update(_fused(adapter))
    return out


def _module_of(key: str, adapter: AdapterWeights) -> str:
    split = split_suffix(key, lora_files.adapter_kind(adapter.config))
    return split[0] if split is not None else key


def _members(adapter: AdapterWeights) -> dict[str, dict[int, tuple[str, dict[str, Tensor]]]]:
    """fused original module -> index -> (diffusers module, its peft tensors by suffix)."""
    kind = lora_files.adapter_kind(adapter.config)
    groups: dict[str, dict[int, tuple[str, dict[str, Tensor]]]] = {}
    for key, tensor in adapter.state.items():
        split = split_suffix(key, kind)
        if split is None:
            continue
        member = layout.fused_member(split[0])
        if member is None:
            continue
        fused, index = member
        groups.setdefault(fused, {}).setdefault(index, (split[0], {}))[1][split[1]] = tensor
    return groups


def _fused(adapter: AdapterWeights) -> dict[str, Tensor]:
    import torch

    kind = lora_files.adapter_kind(adapter.config)
    out: dict[str, Tensor] = {}
    for fused, members in _members(adapter).items():
        base = PREFIX + fused
        if kind != "lora":
            out[base + ".diff"] = torch.cat([_delta(kind, adapter.config, *members[i]) for i in sorted(members)])
            continue
        downs, ups, dora = [], [], []
        for index in range(3):
            name, tensors = members.get(index, ("", {}))
            if not tensors:
                raise ValueError(f"the adapter trains only part of {fused}; adapt to_q, to_k and to_v together")
            scale = lora_files.alpha_for(adapter.config, name) / lora_files.rank_for(adapter.config, name)
            downs.append(tensors[".lora_down.weight"])
            ups.append(tensors[".lora_up.weight"] * scale)
            if ".dora_scale" in tensors:
                dora.append(tensors[".dora_scale"].reshape(-1, 1))
        down = torch.cat(downs)
        out[base + ".lora_down.weight"] = down
        out[base + ".lora_up.weight"] = torch.block_diag(*ups)
        out[base + ".alpha"] = torch.tensor(float(down.shape[0]))
        if dora:
            out[base + ".dora_scale"] = torch.cat(dora)
    return out


def _delta(kind: str, config: Any, name: str, tensors: Mapping[str, Tensor]) -> Tensor:
    """A LoHa or LoKr module's delta weight as peft applies it (alpha / rank included)."""
    import torch

    scale = lora_files.alpha_for(config, name) / lora_files.rank_for(config, name)
    if kind == "loha":
        return (tensors[".hada_w1_a"] @ tensors[".hada_w1_b"]) * (tensors[".hada_w2_a"] @ tensors[".hada_w2_b"]) * scale
    w1 = tensors[".lokr_w1"] if ".lokr_w1" in tensors else tensors[".lokr_w1_a"] @ tensors[".lokr_w1_b"]
    w2 = tensors[".lokr_w2"] if ".lokr_w2" in tensors else tensors[".lokr_w2_a"] @ tensors[".lokr_w2_b"]
    return torch.kron(w1, w2) * scale


def from_comfy(tensors: Mapping[str, Tensor], adapter: AdapterWeights) -> dict[str, Tensor]:
    """A ComfyUI-layout (or diffusers) FLUX.2 LoRA file's tensors for one adapter, under peft's keys."""
    kind = lora_files.adapter_kind(adapter.config)
    own = f"{adapter.component}."
    if any(k.startswith(own) for k in tensors):
        return lora_files.from_file(tensors, adapter, lambda _c, name: module_base(name))
    plain = {k: v for k, v in adapter.state.items() if layout.fused_member(_module_of(k, adapter)) is None}
    out = lora_files.from_file(tensors, AdapterWeights(adapter.component, plain, adapter.config), lambda _c, name: module_base(name))
    if kind == "lora":
        for fused, members in _members(adapter).items():
            out.update(_split(tensors, PREFIX + fused, members, adapter.config))
    return out


def _split(tensors: Mapping[str, Tensor], base: str, members: Mapping[int, tuple[str, Mapping[str, Tensor]]], config: Any) -> dict[str, Tensor]:
    """One fused LoRA's down/up split into the three modules' peft ``lora_A``/``lora_B`` (alpha folded into B)."""
    if base + ".lora_down.weight" not in tensors:
        return {}
    down, up = tensors[base + ".lora_down.weight"].float(), tensors[base + ".lora_up.weight"].float()
    rank = down.shape[0]
    theirs = float(tensors[base + ".alpha"]) / rank if base + ".alpha" in tensors else 1.0
    out: dict[str, Tensor] = {}
    for index, (name, _) in members.items():
        ours = lora_files.alpha_for(config, name) / lora_files.rank_for(config, name)
        rows = up.shape[0] // 3
        own_up = up[index * rows : (index + 1) * rows]
        if rank == 3 * lora_files.rank_for(config, name):  # block-diagonal, as this module writes it
            r = rank // 3
            a, b = down[index * r : (index + 1) * r], own_up[:, index * r : (index + 1) * r]
        else:  # one down shared by q, k and v
            a, b = down, own_up
        out[f"{name}.lora_A.weight"] = a
        out[f"{name}.lora_B.weight"] = b * (theirs / ours)
    return out
