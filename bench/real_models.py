"""Real-size Stable Diffusion models with random weights, built lean: no download, no fp32 copy.

The architectures come from the family specs (``core/families``) (SD1.5 and SDXL base as published). Each
component is made on the meta device, given storage in the storage dtype (bf16) and filled
parameter by parameter (weights ~ N(0, 1/fan_in), norm scales 1, biases 0), so building the
2.6 B-parameter SDXL UNet peaks at its bf16 size (5.2 GB) instead of fp32 + a cast copy
(15.6 GB). The folder is saved in 1 GB safetensors shards, so saving adds at most one shard.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

#: Storage dtype of the built folders (what a published fp16/bf16 checkpoint holds).
STORAGE_DTYPE = "bfloat16"
SHARD = "1GB"


def _fill(module: Any, seed: int) -> None:
    """Random weights in place, one parameter at a time (no full-size temporary)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.dim() > 1:
                fan_in = math.prod(param.shape[1:])
                param.normal_(0.0, 1.0 / math.sqrt(fan_in), generator=generator)
            elif name.endswith("bias"):
                param.zero_()
            elif "norm" in name or name.endswith("weight"):
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02, generator=generator)
        for buffer_name, buffer in module.named_buffers():
            if buffer_name.endswith("position_ids"):  # CLIP's token positions: 0, 1, 2 …
                buffer.copy_(torch.arange(buffer.shape[-1]).expand_as(buffer))
            else:
                buffer.zero_()


def _lean(factory: Any, dtype: Any, seed: int) -> Any:
    """``factory()`` built on the meta device, given ``dtype`` storage on the CPU, then filled."""
    import torch

    with torch.device("meta"):
        module = factory()
    module = module.to(dtype=dtype) if dtype != torch.float32 else module
    module = module.to_empty(device="cpu")
    _fill(module, seed)
    return module


def build_real(family: str, out: Path) -> Path:
    """A diffusers folder of ``family`` (sd1 or sdxl) at real size with random weights; reused if present."""
    if (out / "model_index.json").is_file():
        return out
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from core.families import spec
    from core.families.sd_unet.tiny import write_tokenizer

    configs = spec(family).component_configs()
    dtype = getattr(torch, STORAGE_DTYPE)
    parts: dict[str, Any] = {
        "unet": _lean(lambda: UNet2DConditionModel(**configs["unet"]), dtype, 1),
        "vae": _lean(lambda: AutoencoderKL(**configs["vae"]), dtype, 2),
        "text_encoder": _lean(lambda: CLIPTextModel(CLIPTextConfig(**configs["text_encoder"])), dtype, 3),
    }
    if family == "sdxl":
        parts["text_encoder_2"] = _lean(lambda: CLIPTextModelWithProjection(CLIPTextConfig(**configs["text_encoder_2"])), dtype, 4)
    tokenizer = CLIPTokenizer.from_pretrained(write_tokenizer(out.parent / f"{out.name}-tokenizer"))
    parts["tokenizer"] = tokenizer
    parts["scheduler"] = EulerDiscreteScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type="epsilon",
    )
    if family == "sdxl":
        parts["tokenizer_2"] = tokenizer
        pipeline = StableDiffusionXLPipeline(**parts)
    else:
        pipeline = StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipeline.save_pretrained(out, safe_serialization=True, max_shard_size=SHARD)
    return out


if __name__ == "__main__":
    import sys

    print(build_real(sys.argv[1], Path(sys.argv[2])))
