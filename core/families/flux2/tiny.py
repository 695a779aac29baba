"""The tiny FLUX.2 models: the real classes (Flux2Transformer2DModel, AutoencoderKLFlux2, Qwen3ForCausalLM or
Mistral3ForConditionalGeneration and their tokenizers) at toy size, seeded, offline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.families import llm_tiny
from core.families.sd_unet.tiny import WORDS

SEED = 2470
#: The tiny text encoders' width; the transformer reads three of their layers side by side.
TEXT_WIDTH = 32
#: The tiny VAE's latent channels (FLUX.2's has 32); the transformer sees them 2×2-patchified.
LATENT_CHANNELS = 8


def vae() -> Any:
    """A four-level (8× down) ``AutoencoderKLFlux2`` at toy width, its batch-norm statistics seeded away from 0/1."""
    import torch
    from diffusers import AutoencoderKLFlux2

    model = AutoencoderKLFlux2(
        block_out_channels=(32, 32, 32, 32),
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=32,
        sample_size=64,
    )
    with torch.no_grad():
        model.bn.running_mean.copy_(torch.randn(model.bn.running_mean.shape) * 0.1)
        model.bn.running_var.copy_(torch.rand(model.bn.running_var.shape) + 0.5)
    return model


def transformer(guidance: bool) -> Any:
    """One double- and two single-stream blocks, two heads of 16 (RoPE 4 axes of 4), three text layers wide."""
    from diffusers import Flux2Transformer2DModel

    return Flux2Transformer2DModel(
        patch_size=1,
        in_channels=LATENT_CHANNELS * 4,
        num_layers=1,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=3 * TEXT_WIDTH,
        timestep_guidance_channels=32,
        axes_dims_rope=(4, 4, 4, 4),
        guidance_embeds=guidance,
    )


def build_klein(out_dir: Path) -> Path:
    """Write a tiny FLUX.2 klein (Qwen3 deep enough for layer 27) with its Qwen2 tokenizer as a diffusers folder."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline
    from transformers import AutoTokenizer, Qwen3ForCausalLM

    from core.families.flux2 import SPEC

    tokenizer = AutoTokenizer.from_pretrained(llm_tiny.write_tokenizer(out_dir / "tokenizer", "qwen2", WORDS, 512))
    torch.manual_seed(SEED)
    parts = {
        "transformer": transformer(guidance=False),
        "vae": vae(),
        "text_encoder": Qwen3ForCausalLM(llm_tiny.qwen3_config(tokenizer, hidden=TEXT_WIDTH, layers=28)),
        "tokenizer": tokenizer,
        "scheduler": FlowMatchEulerDiscreteScheduler.from_config(SPEC.scheduler_config()),
    }
    Flux2KleinPipeline(**parts).save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def mistral_encoder(tokenizer: Any) -> Any:
    """A tiny ``Mistral3ForConditionalGeneration``: 31 text layers (dev reads layer 30) of width :data:`TEXT_WIDTH`, a one-layer Pixtral tower."""
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    ids = tokenizer.convert_tokens_to_ids
    config = Mistral3Config(
        text_config={
            "model_type": "mistral",
            "vocab_size": -(-len(tokenizer) // 64) * 64,
            "hidden_size": TEXT_WIDTH,
            "intermediate_size": TEXT_WIDTH * 2,
            "num_hidden_layers": 31,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": TEXT_WIDTH // 4,
            "max_position_embeddings": 2048,
            "bos_token_id": ids("<s>"),
            "eos_token_id": ids("</s>"),
            "pad_token_id": ids("<pad>"),
        },
        vision_config={"model_type": "pixtral", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 56, "patch_size": 14},
        image_token_index=ids("[IMG]"),
        spatial_merge_size=2,
        multimodal_projector_bias=False,
    )
    return Mistral3ForConditionalGeneration(config)


def build_dev(out_dir: Path) -> Path:
    """Write a tiny FLUX.2 dev (Mistral 3 encoder, guidance embedding) with its Mistral tokenizer as a diffusers folder.

    The real model's ``tokenizer`` is a ``PixtralProcessor`` (it needs torchvision, which sdtui does not
    install); the pipeline only calls its ``apply_chat_template``, which the tokenizer has with the same
    template, so the trainer reads the tokenizer alone out of that folder
    (``core.families.loading.tokenizer_of_processor``) and the tiny model ships the tokenizer itself.
    """
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2Pipeline
    from transformers import AutoTokenizer

    from core.families.flux2 import SPEC

    tokenizer = AutoTokenizer.from_pretrained(llm_tiny.write_tokenizer(out_dir / "tokenizer", "mistral", WORDS, 512))
    torch.manual_seed(SEED)
    parts = {
        "transformer": transformer(guidance=True),
        "vae": vae(),
        "text_encoder": mistral_encoder(tokenizer),
        "tokenizer": tokenizer,
        "scheduler": FlowMatchEulerDiscreteScheduler.from_config(SPEC.scheduler_config("flux2-dev")),
    }
    Flux2Pipeline(**parts).save_pretrained(out_dir, safe_serialization=True)
    return out_dir
