"""FLUX.1 models for the benchmarks: the real width at reduced depth on the CPU, the real size on a GPU.

``build_flux(out, double, single, t5_layers)`` writes a diffusers FluxPipeline folder with random
weights: the transformer at FLUX.1-dev's real width (3072, 24 heads, T5 4096 / CLIP 768 inputs,
64-channel packed latents) with ``double`` + ``single`` blocks (None: the real 19 + 38), the real
16-channel VAE and CLIP-L, and T5-XXL at its real width with ``t5_layers`` layers (None: 24).
The tokenizers are the tiny locally built ones (their ids fall inside the real vocabularies).
Reused when the folder exists.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.real_models import STORAGE_DTYPE, _lean


def build_flux(out: Path, double: int | None = 2, single: int | None = 4, t5_layers: int | None = 2) -> Path:
    """The FLUX.1-dev folder at real width (and depth where None); see the module docstring."""
    if (out / "model_index.json").is_file():
        return out
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5TokenizerFast

    from core.families import spec, t5
    from core.families.sd_unet import tiny

    flux = spec("flux")
    configs = flux.component_configs("flux-dev")
    transformer = dict(configs["transformer"])
    if double is not None:
        transformer["num_layers"] = double
    if single is not None:
        transformer["num_single_layers"] = single
    t5_config = dict(configs["text_encoder_2"])
    if t5_layers is not None:
        t5_config["num_layers"] = t5_layers
    dtype = getattr(torch, STORAGE_DTYPE)
    parts: dict[str, Any] = {
        "transformer": _lean(lambda: FluxTransformer2DModel(**transformer), dtype, 11),
        "vae": _lean(lambda: AutoencoderKL(**configs["vae"]), dtype, 12),
        "text_encoder": _lean(lambda: CLIPTextModel(CLIPTextConfig(**configs["text_encoder"])), dtype, 13),
        "text_encoder_2": _lean(lambda: T5EncoderModel(T5Config(**t5_config)), dtype, 14),
        "tokenizer": CLIPTokenizer.from_pretrained(tiny.write_tokenizer(out.parent / f"{out.name}-tokenizer")),
        "tokenizer_2": T5TokenizerFast.from_pretrained(t5.write_tokenizer(out.parent / f"{out.name}-tokenizer-2", tiny.WORDS, 512)),
        "scheduler": FlowMatchEulerDiscreteScheduler.from_config(flux.scheduler_config("flux-dev")),
    }
    FluxPipeline(**parts).save_pretrained(out, safe_serialization=True)
    return out
