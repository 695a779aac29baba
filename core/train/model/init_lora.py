"""``settings.init_lora``: start a new LoRA run from an existing LoRA file.

The file is a kohya/LyCORIS file (``<kohya prefix>_<module>`` keys with ``lora_down`` /
``lora_up``, ``hada_*`` or ``lokr_*`` and ``alpha``, as sd-scripts, this trainer and most
model sites write it) or a diffusers/peft file (``<component>.<module>.lora_A.weight`` …, what
``save_lora_weights`` writes). The family reads it through the same key tables it writes
with (``lora_from_file``); its tensors are copied into the adapters the run has just added,
so the first step starts from them. A kohya alpha that differs from the run's
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
from core.families.lora_files import adapter_kind
from core.train.model.loading import Components, unwrap
from core.train.outputs.files import adapter_state, adapters

log = logging.getLogger(__name__)


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
    denoiser = modules[components.spec.denoiser]
    encoders = [modules.get(name, te) for name, te in zip(components.text_encoder_names, components.text_encoders)]
    by_name = {components.spec.denoiser: denoiser, **dict(zip(components.text_encoder_names, encoders))}
    denoiser_config = dict(unwrap(denoiser).config)
    loaded, fresh = 0, 0
    for adapter in adapters(components, denoiser, encoders):
        params = {name: p for name, p in unwrap(by_name[adapter.component]).named_parameters() if ".default" in name}
        targets = _targets(adapter.state, params)
        wanted = components.runtime.lora_from_file(tensors, adapter, denoiser_config)
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
    encoder_prefixes = tuple(p for te in components.spec.text_encoders for p in (te.kohya_prefix, f"{te.name}."))
    if not any(name in modules for name in components.text_encoder_names) and any(k.startswith(encoder_prefixes) for k in tensors):
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
