"""``settings.merge_lora``: a LoRA merged into the base model's weights before training.

What diffusion-pipe's ``merge_adapters`` and ai-toolkit's training adapters do for a distilled
model (a de-distill adapter on a few-step model: docs/families/ names them): the adapter is
read by the family's pipeline (``load_lora_weights``, so every layout that pipeline reads works),
fused into the weights and dropped, and the run's own adapter is then added on top. The saved LoRA
holds only what this run trained; samples show the merged model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.errors import UserError


def merge_lora(components: Any, path_text: str) -> None:
    """Fuse the LoRA file ``path_text`` into ``components``' denoiser (and text encoders where it has theirs); UserError for a file that is missing or does not fit."""
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise UserError(f"settings.merge_lora names {path}, which does not exist; give the adapter's .safetensors file or leave merge_lora empty")
    pipe = components.pipeline()
    try:
        pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name="merged")
        pipe.fuse_lora(adapter_names=["merged"], lora_scale=1.0)
        pipe.unload_lora_weights()
    except Exception as exc:  # noqa: BLE001 - any reader error of a foreign file: one sentence
        text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UserError(f"settings.merge_lora: {path} does not load into this {components.spec.title} model ({text}); give a LoRA made for it") from None
