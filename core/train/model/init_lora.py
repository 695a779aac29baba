"""``settings.init_lora``: start a new LoRA run from an existing LoRA file.

The file is a kohya/LyCORIS file (``lora_unet_…``, ``lora_te…_`` keys with ``lora_down`` /
``lora_up``, ``hada_*`` or ``lokr_*`` and ``alpha``, as sd-scripts, this trainer and most
model sites write it) or a diffusers/peft file (``unet.<module>.lora_A.weight`` …, what
``save_lora_weights`` writes). Its tensors are copied into the adapters the run has just
added, so the first step starts from them. A kohya alpha that differs from the run's
``lora_alpha`` is folded into the up (or first) factor, so the starting delta weights are
exactly the file's. Ranks must match; modules the file does not cover keep their fresh start
(an event says how many).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from core.errors import UserError

from core.train.model.loading import Components, unwrap
from core.train.outputs.files import KOHYA_SUFFIXES, adapter_kind, adapter_state, alpha_for, kohya_key, kohya_module_names, rank_for, split_key

log = logging.getLogger(__name__)

#: The factor that carries the scale when a kohya alpha is folded in, per adapter type.
_SCALED = {"lora": ".lora_up.weight", "loha": ".hada_w1_a", "lokr": ".lokr_w1"}


def read_lora_file(path: str) -> dict[str, Any]:
    """The tensors of a LoRA ``.safetensors`` file (UserError naming the file otherwise)."""
    from safetensors.torch import load_file

    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"settings.init_lora {file} does not exist; point it at a LoRA .safetensors file (kohya or diffusers format)")
    try:
        return load_file(str(file))
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise UserError(f"settings.init_lora {file} is not a readable .safetensors file ({type(exc).__name__}); point it at a LoRA file") from None


def load_init_lora(components: Components, modules: Mapping[str, Any], path: str) -> tuple[int, int]:
    """Copy the LoRA in ``path`` into the adapters of ``modules`` (name → module with an adapter).

    Returns (tensors loaded, adapter tensors left at their fresh start).
    """
    import torch

    tensors = read_lora_file(path)
    encoders = [modules.get(name, te) for name, te in zip(components.text_encoder_names, components.text_encoders)]
    loaded, fresh = 0, 0
    for prefix, module, unet_config in kohya_module_names(components, modules["unet"], encoders):
        state, config = adapter_state(module)
        if config is None:
            continue
        kind = adapter_kind(config)
        params = {name: p for name, p in unwrap(module).named_parameters() if ".default" in name}
        targets = _targets(state, params)
        wanted = _from_file(tensors, prefix, kind, config, state, components, unet_config)
        with torch.no_grad():
            for key, target in targets.items():
                if key not in wanted:
                    fresh += 1
                    continue
                value = wanted[key]
                if tuple(value.shape) != tuple(target.shape):
                    raise UserError(
                        f"settings.init_lora {path} has {key} shaped {tuple(value.shape)} but this run's adapter is {tuple(target.shape)}; "
                        "set lora_rank (and lora_type, lora_targets) to what the file was trained with"
                    )
                target.copy_(value.to(target.dtype))
                loaded += 1
    if loaded == 0:
        raise UserError(f"settings.init_lora {path} has no tensor for this run's adapters; it must be a {adapter_kinds(modules)} file for the same model family")
    if not any(name in modules for name in components.text_encoder_names) and any(k.startswith(("lora_te", "text_encoder")) for k in tensors):
        log.warning("init_lora %s also holds a text-encoder LoRA, which is not used because settings.train_text_encoder is false", path)
    if fresh:
        log.warning("init_lora %s covers %d of %d adapter tensors; the others start fresh", path, loaded, loaded + fresh)
    return loaded, fresh


def adapter_kinds(modules: Mapping[str, Any]) -> str:
    """The adapter types of ``modules`` (for messages)."""
    kinds = {adapter_kind(config) for module in modules.values() if (config := adapter_state(module)[1]) is not None}
    return "/".join(sorted(kinds)) or "LoRA"


def _targets(state: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """peft state-dict key (without the adapter name) → the live parameter."""
    by_plain = {name.replace(".default", ""): p for name, p in params.items()}
    return {key: by_plain[key] for key in state if key in by_plain}


def _from_file(tensors: Mapping[str, Any], prefix: str, kind: str, config: Any, state: Mapping[str, Any], components: Components, unet_config: Any) -> dict[str, Any]:
    """The file's tensors for one module under peft state-dict keys (kohya keys converted, alpha folded in)."""
    diffusers = _diffusers_prefixes(components)[prefix]
    if any(k.startswith(diffusers) for k in tensors):
        return {k[len(diffusers):]: v for k, v in tensors.items() if k.startswith(diffusers)}
    out: dict[str, Any] = {}
    names = {split[0] for key in state if (split := split_key(key, KOHYA_SUFFIXES[kind])) is not None}
    for name in names:
        base = kohya_key(prefix, name, components, unet_config)
        group = {suffix: tensors[base + suffix] for _, suffix in KOHYA_SUFFIXES[kind] if base + suffix in tensors}
        if not group:
            continue
        ours = alpha_for(config, name) / rank_for(config, name)
        if kind == "lokr" and not any(k in group for k in (".lokr_w1_a", ".lokr_w2_a")):
            theirs = 1.0  # ComfyUI / A1111 apply no scale to undecomposed LoKr factors
        else:
            rank = _file_rank(group, kind)
            theirs = float(tensors[base + ".alpha"]) / rank if base + ".alpha" in tensors else 1.0
        scaled = _SCALED[kind]
        if scaled in group:
            group[scaled] = group[scaled].float() * (theirs / ours)
        for marker, suffix in KOHYA_SUFFIXES[kind]:
            if suffix in group:
                value = group[suffix]
                if suffix == ".dora_scale":
                    value = value.reshape(-1)
                out[name + marker] = value
    return out


def _diffusers_prefixes(components: Components) -> dict[str, str]:
    """kohya prefix → the key prefix of the same module in a diffusers LoRA file."""
    return {"lora_unet": "unet."} | {te.kohya_prefix: f"{te.name}." for te in components.spec.text_encoders}


def _file_rank(group: Mapping[str, Any], kind: str) -> int:
    if kind == "lora":
        return int(group[".lora_down.weight"].shape[0])
    if kind == "loha":
        return int(group[".hada_w1_b"].shape[0])
    for key in (".lokr_w2_b", ".lokr_w1_b"):
        if key in group:
            return int(group[key].shape[0])
    return 1
