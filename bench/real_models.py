"""The benchmarks' models and data: Stable Diffusion architectures with random weights, and a generated dataset.

The architectures come from the family specs (``core/families``) (SD1.5 and SDXL base as published), at real
size or shrunk to toy widths with the same block structure (``tiny_configs``, what
``bench_gpu --tiny`` checks itself with on the CPU). Each component is made on the meta device, given storage in the storage dtype (bf16) and filled
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


def tiny_configs(family: str) -> dict[str, dict[str, Any]]:
    """The real configs of ``family`` shrunk to toy widths and depths (same block structure)."""
    from core.families import spec

    configs = spec(family).component_configs()
    unet = configs["unet"]
    levels = len(unet["block_out_channels"])
    unet.update(block_out_channels=[32] * levels, layers_per_block=1, norm_num_groups=8, cross_attention_dim=32 * (2 if family == "sdxl" else 1))
    unet["attention_head_dim"] = 8 if family == "sd1" else [8] * levels
    if "transformer_layers_per_block" in unet:
        unet["transformer_layers_per_block"] = [1] * levels
    if family == "sdxl":
        unet.update(addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 32)
    configs["vae"].update(block_out_channels=[32] * len(configs["vae"]["block_out_channels"]), layers_per_block=1)
    for name in ("text_encoder", "text_encoder_2"):
        if name in configs:
            configs[name].update(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, projection_dim=32)
    return configs


def build_real(family: str, out: Path, tiny: bool = False) -> Path:
    """A diffusers folder of ``family`` (sd1 or sdxl) with random weights, real size or ``tiny``; reused if present."""
    if (out / "model_index.json").is_file():
        return out
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from core.families import spec
    from core.families.sd_unet.tiny import write_tokenizer

    configs = tiny_configs(family) if tiny else spec(family).component_configs()
    dtype = torch.float32 if tiny else getattr(torch, STORAGE_DTYPE)
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
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
    )
    if family == "sdxl":
        parts["tokenizer_2"] = tokenizer
        pipeline = StableDiffusionXLPipeline(**parts)
    else:
        pipeline = StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipeline.save_pretrained(out, safe_serialization=True, max_shard_size=SHARD)
    return out


def make_dataset(root: Path, resolution: int, count: int = 8) -> Path:
    """A kohya folder ``1_sks thing`` of ``count`` square noise pictures of ``resolution`` px, each with its caption; reused if present."""
    if root.is_dir():
        return root
    import numpy as np
    from PIL import Image

    folder = root / "1_sks thing"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        pixels = rng.integers(0, 256, (resolution, resolution, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:03d}.png")
        (folder / f"{i:03d}.txt").write_text(f"a photo of sks thing, picture {i}", encoding="utf-8")
    return root


if __name__ == "__main__":
    import sys

    print(build_real(sys.argv[1], Path(sys.argv[2])))
