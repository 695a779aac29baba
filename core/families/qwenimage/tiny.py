"""The tiny Qwen-Image: the real classes (QwenImageTransformer2DModel, AutoencoderKLQwenImage,
Qwen2_5_VLForConditionalGeneration and its Qwen2 BPE tokenizer) at toy size, seeded, offline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.families import llm_tiny
from core.families.sd_unet.tiny import WORDS

SEED = 2469
#: The tiny text encoder's width (the transformer's ``joint_attention_dim``).
TEXT_WIDTH = 32


def text_encoder(tokenizer: Any) -> Any:
    """A two-layer Qwen2.5-VL (text tower and a one-block vision tower) of width :data:`TEXT_WIDTH` over ``tokenizer``'s vocabulary."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = tokenizer.convert_tokens_to_ids
    special = {"bos_token_id": ids("<|endoftext|>"), "eos_token_id": ids("<|im_end|>"), "pad_token_id": ids("<|endoftext|>")}
    vocab_size = -(-len(tokenizer) // 64) * 64
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": TEXT_WIDTH,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 2048,
            "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e6},
            **special,
        },
        vision_config={"depth": 1, "hidden_size": 16, "intermediate_size": 32, "num_heads": 2, "out_hidden_size": TEXT_WIDTH, "fullatt_block_indexes": [0]},
        **special,
    )
    return Qwen2_5_VLForConditionalGeneration(config)


def vae(latents_mean: list[float], latents_std: list[float]) -> Any:
    """The Wan-style VAE with 16 latent channels and 8× downscale, at toy width, with Qwen-Image's channel statistics."""
    from diffusers import AutoencoderKLQwenImage

    return AutoencoderKLQwenImage(
        base_dim=16,
        z_dim=16,
        dim_mult=[1, 2, 2, 2],
        num_res_blocks=1,
        attn_scales=[],
        temperal_downsample=[False, True, True],
        latents_mean=latents_mean,
        latents_std=latents_std,
    )


def transformer() -> Any:
    """Two double-stream blocks, two heads of 16 (RoPE axes 4 + 6 + 6), 2×2 patches of 16 channels."""
    from diffusers import QwenImageTransformer2DModel

    return QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=64,
        out_channels=16,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=TEXT_WIDTH,
        axes_dims_rope=(4, 6, 6),
    )


def build(pipeline_class: Any, out_dir: Path) -> Path:
    """Write the tiny Qwen-Image as a diffusers folder (deterministic, loadable offline)."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler
    from transformers import AutoTokenizer

    from core.families.qwenimage import PROMPT, SPEC, VAE

    tokenizer = AutoTokenizer.from_pretrained(llm_tiny.write_tokenizer(out_dir / "tokenizer", "qwen2", WORDS, PROMPT.max_tokens))
    torch.manual_seed(SEED)
    parts = {
        "transformer": transformer(),
        "vae": vae(VAE["latents_mean"], VAE["latents_std"]),
        "text_encoder": text_encoder(tokenizer),
        "tokenizer": tokenizer,
        "scheduler": FlowMatchEulerDiscreteScheduler.from_config(SPEC.scheduler_config()),
    }
    pipeline_class(**parts).save_pretrained(out_dir, safe_serialization=True)
    return out_dir
