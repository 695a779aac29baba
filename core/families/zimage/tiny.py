"""The tiny Z-Image: the real architecture at toy size, seeded, with its Qwen2 tokenizer and chat template built locally.

A transformer 32 wide (2 layers, 1 refiner layer each, 2 heads of 16), a 3-layer Qwen3 over the
tiny byte-level vocabulary (``core.families.llm_tiny``; Z-Image reads its second-to-last layer),
the toy 16-channel VAE with FLUX.1's scaling and shift, and Z-Image-Turbo's scheduler, so the
whole training path runs on a CPU in seconds and offline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SEED = 4321
#: The tiny text encoder's width (the transformer's ``cap_feat_dim``) and depth.
TEXT_WIDTH = 32
TEXT_LAYERS = 3


def transformer(cap_feat_dim: int = TEXT_WIDTH) -> Any:
    """A seeded ``ZImageTransformer2DModel`` at toy size reading captions ``cap_feat_dim`` wide."""
    import torch
    from diffusers import ZImageTransformer2DModel

    torch.manual_seed(SEED)
    return ZImageTransformer2DModel(
        in_channels=16,
        dim=32,
        n_layers=2,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        cap_feat_dim=cap_feat_dim,
        axes_dims=[4, 6, 6],
        axes_lens=[1024, 64, 64],
    )


def parts(out_dir: Path) -> dict[str, Any]:
    """The tiny model's modules and tokenizer by component name (the tokenizer written to ``out_dir/tokenizer`` first)."""
    from transformers import AutoTokenizer

    from core.families import llm_tiny
    from core.families.flow_mmdit import tiny as flow_tiny
    from core.families.sd_unet.tiny import WORDS
    from core.families.zimage import PROMPT, SPEC

    tokenizer = AutoTokenizer.from_pretrained(llm_tiny.write_tokenizer(out_dir / "tokenizer", "qwen2", WORDS, PROMPT.max_tokens))
    vae = SPEC.configs["vae"]
    return {
        "transformer": transformer(),
        "vae": flow_tiny.vae16(float(vae["scaling_factor"]), float(vae["shift_factor"])),
        "text_encoder": llm_tiny.qwen3_encoder(llm_tiny.qwen3_config(tokenizer, TEXT_WIDTH, TEXT_LAYERS)),
        "tokenizer": tokenizer,
        "scheduler": flow_tiny.scheduler(SPEC.scheduler),
    }
