"""FLUX.1 / Chroma LoRA files in the layout sd-scripts writes and ComfyUI loads, and back.

LoRA (not DoRA): ``lora_unet_<BFL module>`` with dots as underscores
(``lora_unet_double_blocks_0_img_attn_qkv``, ``lora_unet_single_blocks_3_linear1``), as
sd-scripts' ``networks/lora_flux.py`` names them and ComfyUI's ``comfy/lora.py`` maps them onto
the BFL model. Where BFL fuses modules diffusers keeps apart (q/k/v, a single block's q/k/v +
MLP) the parts' LoRAs become one: the ``lora_down`` of the parts stacked (rank Σr), the
``lora_up`` block-diagonal (each part's up in its own rows and columns, zeros elsewhere,
a part not trained all zeros), so ``up @ down`` is exactly each part's delta in its rows; the
alpha is scaled to keep ``alpha / rank``. The final modulation's ``lora_up`` rows are swapped
as its weight is. The CLIP-L encoder is ``lora_te1_text_model_…``.
LoHa, LoKr and DoRA cannot be fused (a Kronecker product has no block-diagonal form, and
DoRA's magnitude is a norm over the whole weight): a module that is one whole BFL module is
written under its BFL name (``lora_unet_double_blocks_0_img_attn_proj.hada_w1_a``, as sd-scripts
with LyCORIS names it; ComfyUI maps ``lora_unet_`` + every BFL weight), each part of a fused
module and the row-swapped final modulation under diffusers' names with ``lora_transformer_``
(OneTrainer's layout: ComfyUI's ``flux_to_diffusers`` table maps those onto the fused weight's
rows, and swaps the final modulation's delta, not its DoRA magnitude: that one is written in BFL's
row order). Whole modules that table does not name (Chroma's
approximator, ``distilled_guidance_layer``) would be dropped under diffusers' names.
Reading a fused file splits it back: a block-diagonal ``lora_up`` into its blocks, a shared
``lora_down`` (sd-scripts' own files: one LoRA over the fused weight) into one copy per part;
whole modules are read under either name (OneTrainer's files use diffusers' names throughout).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from core.errors import UserError
from core.families import lora_files
from core.families.flux import layout
from core.families.keymaps import KeyMap
from core.families.protocol import AdapterWeights
from core.families.spec import FamilySpec

if TYPE_CHECKING:
    from torch import Tensor

#: The CLIP-L encoder's LoRA module names in kohya files: under ``text_model.`` (transformers' own root).
TEXT_MODULES = KeyMap((("text_model.{*}", "text_model.{*}"), ("{*}", "text_model.{*}")))
#: The key base of the unfused (OneTrainer / ComfyUI) layout: diffusers' module names.
DIFFUSERS_BASE = "lora_transformer_"


def _text_base(spec: FamilySpec, component: str, name: str) -> str:
    prefix = next(te.kohya_prefix for te in spec.text_encoders if te.name == component)
    return f"{prefix}_{TEXT_MODULES.to_theirs(name).replace('.', '_')}"


def _unfused_base(spec: FamilySpec) -> Any:
    def base(component: str, name: str) -> str:
        return DIFFUSERS_BASE + name.replace(".", "_") if component == spec.denoiser else _text_base(spec, component, name)

    return base


def _whole_modules(config: Mapping[str, Any], global_modules: Mapping[str, str]) -> dict[str, str]:
    """Each diffusers module that is one whole BFL module (not a fused part, not the row-swapped
    final modulation) -> its key base under the BFL name (``lora_unet_…``)."""
    table = layout.module_table(config, global_modules)
    return {parts[0]: "lora_unet_" + bfl.replace(".", "_") for bfl, parts in table.items() if len(parts) == 1 and bfl != layout.SWAPPED}


def _lycoris_base(spec: FamilySpec, whole: Mapping[str, str]) -> Any:
    """LoHa / LoKr / DoRA key bases: whole BFL modules under their BFL names, the rest under diffusers' names."""
    unfused = _unfused_base(spec)

    def base(component: str, name: str) -> str:
        return whole[name] if component == spec.denoiser and name in whole else unfused(component, name)

    return base


def _swap_dora_scale(tensors: Mapping[str, Tensor], config: Mapping[str, Any], global_modules: Mapping[str, str]) -> dict[str, Tensor]:
    """``tensors`` with the final modulation's DoRA magnitude in the other row order (diffusers' <-> BFL's):
    ComfyUI swaps that module's delta into BFL's order but rescales the BFL weight's rows by
    ``dora_scale`` as it is, so the file keeps the magnitude in BFL's order. Its own inverse."""
    swapped = layout.module_table(config, global_modules).get(layout.SWAPPED)
    key = f"{DIFFUSERS_BASE}{swapped[0].replace('.', '_')}.dora_scale" if swapped else ""
    return {k: layout.swap_halves(v) if k == key else v for k, v in tensors.items()}


def _owners(config: Mapping[str, Any], global_modules: Mapping[str, str]) -> dict[str, tuple[str, int, tuple[str, ...]]]:
    """Each diffusers module -> (its BFL module, its place among the fused parts, the parts)."""
    return {part: (bfl, i, parts) for bfl, parts in layout.module_table(config, global_modules).items() for i, part in enumerate(parts)}


def kohya_state_dict(adapters: Sequence[AdapterWeights], config: Mapping[str, Any], spec: FamilySpec, global_modules: Mapping[str, str]) -> dict[str, Tensor]:
    """Every adapter under kohya keys: plain LoRA on the transformer fused into BFL modules, the rest unfused."""
    import torch

    out: dict[str, Tensor] = {}
    owners = _owners(config, global_modules)
    lycoris = _lycoris_base(spec, _whole_modules(config, global_modules))
    for adapter in adapters:
        kind = lora_files.adapter_kind(adapter.config)
        dora = bool(getattr(adapter.config, "use_dora", False))
        if adapter.component != spec.denoiser or kind != "lora" or dora:
            out.update(_swap_dora_scale(lora_files.kohya_state_dict([adapter], lycoris), config, global_modules))
            continue
        groups: dict[str, dict[int, tuple[Tensor, Tensor, float]]] = {}
        for key, tensor in adapter.state.items():
            if not key.endswith(".lora_A.weight"):
                continue
            name = key[: -len(".lora_A.weight")]
            if name not in owners:
                raise ValueError(f"no BFL module holds the adapted {name}")
            bfl, index, _parts = owners[name]
            scale = lora_files.alpha_for(adapter.config, name) / lora_files.rank_for(adapter.config, name)
            groups.setdefault(bfl, {})[index] = (tensor, adapter.state[f"{name}.lora_B.weight"], scale)
        for bfl, trained in groups.items():
            parts = layout.module_table(config, global_modules)[bfl]
            scales = {round(scale, 9) for _, _, scale in trained.values()}
            if len(scales) != 1:
                raise ValueError(f"the parts of {bfl} were trained with different alpha / rank; they cannot be fused")
            downs = [trained[i][0] for i in sorted(trained)]
            rank = sum(int(d.shape[0]) for d in downs)
            sizes = [int(layout.part_sizes(config, p)) if len(parts) > 1 else int(trained[0][1].shape[0]) for p in parts]
            up = torch.zeros(sum(sizes), rank, dtype=downs[0].dtype)
            row = column = 0
            for i, size in enumerate(sizes):
                if i in trained:
                    part_up = trained[i][1]
                    up[row : row + size, column : column + part_up.shape[1]] = part_up
                    column += part_up.shape[1]
                row += size
            base = "lora_unet_" + bfl.replace(".", "_")
            out[base + ".lora_down.weight"] = torch.cat(downs, dim=0)
            out[base + ".lora_up.weight"] = layout.swap_halves(up) if bfl == layout.SWAPPED else up
            out[base + ".alpha"] = torch.tensor(scales.pop() * rank)
    return out


def _unfuse(tensors: Mapping[str, Tensor], config: Mapping[str, Any], global_modules: Mapping[str, str]) -> dict[str, Tensor]:
    """A fused kohya file's transformer LoRAs as per-diffusers-module LoRAs under :data:`DIFFUSERS_BASE` names."""
    out: dict[str, Tensor] = {}
    for bfl, parts in layout.module_table(config, global_modules).items():
        base = "lora_unet_" + bfl.replace(".", "_")
        if base + ".lora_down.weight" not in tensors:
            continue
        down, up = tensors[base + ".lora_down.weight"], tensors[base + ".lora_up.weight"]
        up = layout.swap_halves(up) if bfl == layout.SWAPPED else up
        rank = int(down.shape[0])
        alpha = float(tensors[base + ".alpha"]) if base + ".alpha" in tensors else float(rank)
        sizes = [layout.part_sizes(config, p) for p in parts] if len(parts) > 1 else [int(up.shape[0])]
        rows = up.split(sizes, dim=0)
        used = [(p, r) for p, r in zip(parts, rows) if bool(r.abs().sum() > 0)]
        columns = [r.abs().sum(dim=0) > 0 for _, r in used]
        diagonal = len(used) > 1 and all(not bool((a & b).any()) for i, a in enumerate(columns) for b in columns[i + 1 :])
        for (part, part_up), cols in zip(used, columns):
            name = DIFFUSERS_BASE + part.replace(".", "_")
            if diagonal:
                out[name + ".lora_down.weight"] = down[cols]
                out[name + ".lora_up.weight"] = part_up[:, cols]
                out[name + ".alpha"] = tensor_like(alpha * int(cols.sum()) / rank, down)
            else:
                out[name + ".lora_down.weight"] = down
                out[name + ".lora_up.weight"] = part_up
                out[name + ".alpha"] = tensor_like(alpha, down)
    return out


def tensor_like(value: float, like: Tensor) -> Tensor:
    """A scalar tensor (an alpha) on ``like``'s device."""
    import torch

    return torch.tensor(value, device=like.device)


def from_file(tensors: Mapping[str, Tensor], adapter: AdapterWeights, config: Mapping[str, Any], spec: FamilySpec, global_modules: Mapping[str, str]) -> dict[str, Tensor]:
    """A diffusers, fused kohya or unfused kohya file's tensors for one adapter under peft's keys (whole
    BFL modules of a LoHa / LoKr / DoRA file under their BFL or their diffusers names)."""
    if adapter.component == spec.denoiser and any(k.startswith("lora_unet_") for k in tensors):
        fused = {bfl for bfl, parts in layout.module_table(config, global_modules).items() if len(parts) > 1}
        if lora_files.adapter_kind(adapter.config) != "lora" and any(k.startswith("lora_unet_" + bfl.replace(".", "_") + ".lora_down") for bfl in fused for k in tensors):
            raise UserError('settings.init_lora is a LoRA in sd-scripts\' fused FLUX layout and this run trains LoHa/LoKr; set lora_type = "lora" to continue it')
        named = {base: name for name, base in _whole_modules(config, global_modules).items()}
        aliases = {DIFFUSERS_BASE + named[stem].replace(".", "_") + "." + rest: tensor for key, tensor in tensors.items() for stem, _, rest in [key.partition(".")] if stem in named}
        tensors = {**tensors, **_unfuse(tensors, config, global_modules), **aliases}
    if adapter.component == spec.denoiser:
        tensors = _swap_dora_scale(tensors, config, global_modules)
    return lora_files.from_file(tensors, adapter, _unfused_base(spec))
