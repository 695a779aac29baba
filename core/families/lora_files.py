"""LoRA / LoHa / LoKr state dicts in the layouts other tools load, and back, for any family.

A family runtime supplies the names (``kohya_base``: component and peft module path -> the kohya
key base, from its key tables); this module applies the adapter rules every family shares:

* LoRA: ``.lora_down.weight``, ``.lora_up.weight`` and, for DoRA, ``.dora_scale`` shaped
  ``[out, 1]`` (as ComfyUI reads it);
* LoHa: ``.hada_w1_a`` … (delta = (w1_a·w1_b) ⊙ (w2_a·w2_b) · alpha / rank, as peft, ComfyUI, A1111);
* LoKr: ``.lokr_w1`` and ``.lokr_w2`` or ``.lokr_w2_a``/``.lokr_w2_b``; when no factor is
  decomposed ComfyUI and A1111 apply no scale, so peft's alpha / rank is folded into ``lokr_w1``;
* each module's ``.alpha``.

The diffusers layout is ``<component>.<peft key>`` (what ``save_lora_weights`` writes).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from core.families.keymaps import KOHYA_SUFFIXES, split_suffix
from core.families.protocol import AdapterWeights

if TYPE_CHECKING:
    from torch import Tensor

#: The factor that carries the scale when a kohya alpha is folded in, per adapter type.
_SCALED = {"lora": ".lora_up.weight", "loha": ".hada_w1_a", "lokr": ".lokr_w1"}

KohyaBase = Callable[[str, str], str]


def adapter_kind(config: Any) -> str:
    """``lora``, ``loha`` or ``lokr`` from a peft config."""
    return {"LORA": "lora", "LOHA": "loha", "LOKR": "lokr"}[str(getattr(config.peft_type, "value", config.peft_type)).upper()]


def alpha_for(config: Any, module_name: str) -> float:
    """The trained alpha of one module, honouring peft's per-module patterns."""
    for pattern, value in (getattr(config, "alpha_pattern", None) or {}).items():
        if module_name.endswith(pattern):
            return float(value)
    return float(config.lora_alpha if hasattr(config, "lora_alpha") else config.alpha)


def rank_for(config: Any, module_name: str) -> int:
    """The trained rank of one module, honouring peft's per-module patterns."""
    for pattern, value in (getattr(config, "rank_pattern", None) or {}).items():
        if module_name.endswith(pattern):
            return int(value)
    return int(config.r)


def _grouped(adapter: AdapterWeights) -> dict[str, dict[str, Tensor]]:
    kind = adapter_kind(adapter.config)
    grouped: dict[str, dict[str, Tensor]] = {}
    for key, tensor in adapter.state.items():
        split = split_suffix(key, kind)
        if split is not None:
            grouped.setdefault(split[0], {})[split[1]] = tensor
    return grouped


def kohya_state_dict(adapters: Sequence[AdapterWeights], kohya_base: KohyaBase) -> dict[str, Tensor]:
    """Every adapter's tensors under kohya/LyCORIS keys (``<base><suffix>`` and ``<base>.alpha``)."""
    import torch

    out: dict[str, Tensor] = {}
    for adapter in adapters:
        config = adapter.config
        kind = adapter_kind(config)
        for name, tensors in _grouped(adapter).items():
            base = kohya_base(adapter.component, name)
            alpha = alpha_for(config, name)
            if kind == "lora" and ".dora_scale" in tensors:
                up = tensors[".lora_up.weight"]
                tensors[".dora_scale"] = tensors[".dora_scale"].reshape(up.shape[0], *([1] * (up.ndim - 1)))
            if kind == "lokr" and not any(k in tensors for k in (".lokr_w1_a", ".lokr_w2_a")):
                tensors[".lokr_w1"] = tensors[".lokr_w1"] * (alpha / rank_for(config, name))
            for suffix, tensor in tensors.items():
                out[base + suffix] = tensor
            out[base + ".alpha"] = torch.tensor(alpha)
    return out


def diffusers_state_dict(adapters: Sequence[AdapterWeights]) -> dict[str, Tensor]:
    """Every LoRA adapter's tensors as ``<component>.<peft key>`` (diffusers' ``save_lora_weights`` layout)."""
    return {f"{adapter.component}.{key}": tensor for adapter in adapters for key, tensor in adapter.state.items()}


def diffusers_metadata(adapters: Sequence[AdapterWeights]) -> dict[str, str]:
    """The diffusers file's safetensors metadata: peft's adapter configs under ``lora_adapter_metadata``
    (``<component>.<field>``, as ``save_lora_weights`` packs them), so alpha survives a reload."""
    import json

    packed: dict[str, Any] = {}
    for adapter in adapters:
        for key, value in adapter.config.to_dict().items():
            packed[f"{adapter.component}.{key}"] = sorted(value) if isinstance(value, set) else value
    return {"format": "pt", "lora_adapter_metadata": json.dumps(packed, indent=2, sort_keys=True)}


def from_file(tensors: Mapping[str, Tensor], adapter: AdapterWeights, kohya_base: KohyaBase) -> dict[str, Tensor]:
    """A LoRA file's tensors for one adapter under peft's state-dict keys.

    A diffusers file (``<component>.<peft key>``) is taken as it is; a kohya/LyCORIS file goes
    through the same names as :func:`kohya_state_dict`, its alpha folded into the scaled factor.
    """
    own = f"{adapter.component}."
    if any(k.startswith(own) for k in tensors):
        return {k[len(own) :]: v for k, v in tensors.items() if k.startswith(own)}
    config = adapter.config
    kind = adapter_kind(config)
    suffixes = KOHYA_SUFFIXES[kind].pairs
    out: dict[str, Tensor] = {}
    for name in {split[0] for key in adapter.state if (split := split_suffix(key, kind)) is not None}:
        base = kohya_base(adapter.component, name)
        group = {suffix: tensors[base + suffix] for _, suffix in suffixes if base + suffix in tensors}
        if not group:
            continue
        ours = alpha_for(config, name) / rank_for(config, name)
        if kind == "lokr" and not any(k in group for k in (".lokr_w1_a", ".lokr_w2_a")):
            theirs = 1.0  # ComfyUI / A1111 apply no scale to undecomposed LoKr factors
        else:
            theirs = float(tensors[base + ".alpha"]) / _file_rank(group, kind) if base + ".alpha" in tensors else 1.0
        scaled = _SCALED[kind]
        if scaled in group:
            group[scaled] = group[scaled].float() * (theirs / ours)
        for marker, suffix in suffixes:
            if suffix in group:
                value = group[suffix]
                out[name + marker] = value.reshape(-1) if suffix == ".dora_scale" else value
    return out


def _file_rank(group: Mapping[str, Tensor], kind: str) -> int:
    if kind == "lora":
        return int(group[".lora_down.weight"].shape[0])
    if kind == "loha":
        return int(group[".hada_w1_b"].shape[0])
    for key in (".lokr_w2_b", ".lokr_w1_b"):
        if key in group:
            return int(group[key].shape[0])
    return 1
