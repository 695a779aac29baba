"""SD 3.5 Medium at real size for the GPU benchmark: a StableDiffusion3Pipeline folder with random weights.

``build_sd35(out)`` writes the real MMDiT-X (24 joint blocks, 1536 wide, dual attention in 0–12),
the real 16-channel VAE, CLIP-L, CLIP-G and T5-XXL (4.7 B: the folder takes minutes and about
14 GB in bf16), the flow scheduler with shift 3.0, and the tiny locally built tokenizers (their
ids fall inside the real vocabularies). Reused when the folder exists.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.real_models import STORAGE_DTYPE, _lean


def build_sd35(out: Path, variant: str = "sd35-medium") -> Path:
    """The SD 3.5 folder of ``variant`` at real size; see the module docstring."""
    if (out / "model_index.json").is_file():
        return out
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer, T5Config, T5EncoderModel, T5TokenizerFast

    from core.families import spec, t5
    from core.families.sd_unet import tiny

    family = spec("sd35")
    configs = family.component_configs(variant)
    dtype = getattr(torch, STORAGE_DTYPE)
    clip_tokenizer = CLIPTokenizer.from_pretrained(tiny.write_tokenizer(out.parent / f"{out.name}-tokenizer"))
    parts: dict[str, Any] = {
        "transformer": _lean(lambda: SD3Transformer2DModel(**configs["transformer"]), dtype, 21),
        "vae": _lean(lambda: AutoencoderKL(**configs["vae"]), dtype, 22),
        "text_encoder": _lean(lambda: CLIPTextModelWithProjection(CLIPTextConfig(**configs["text_encoder"])), dtype, 23),
        "text_encoder_2": _lean(lambda: CLIPTextModelWithProjection(CLIPTextConfig(**configs["text_encoder_2"])), dtype, 24),
        "text_encoder_3": _lean(lambda: T5EncoderModel(T5Config(**configs["text_encoder_3"])), dtype, 25),
        "tokenizer": clip_tokenizer,
        "tokenizer_2": clip_tokenizer,
        "tokenizer_3": T5TokenizerFast.from_pretrained(t5.write_tokenizer(out.parent / f"{out.name}-tokenizer-3", tiny.WORDS, family.max_tokens("text_encoder_3"))),
        "scheduler": FlowMatchEulerDiscreteScheduler.from_config(family.scheduler_config(variant)),
    }
    StableDiffusion3Pipeline(**parts).save_pretrained(out, safe_serialization=True)
    return out
