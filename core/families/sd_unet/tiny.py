"""Tiny SD-UNet-family components with random weights: a CLIP BPE tokenizer, CLIP text encoders, a KL VAE, a UNet.

The real architectures at toy size, so the whole training path runs on a CPU and offline.
Each family's runtime (its private ``_tiny_pipeline``, used by ``build_tiny``) picks its variant of these; ``core/train/model/tiny.py``
writes them as a diffusers folder or a single file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.families.bpe import byte_symbols, vocabulary

SEED = 1234
VOCAB_SIZE = 1000
BOS, EOS = "<|startoftext|>", "<|endoftext|>"

#: Words the demo and test captions use; each gets BPE merges so it is one token.
WORDS = [
    "a",
    "an",
    "the",
    "of",
    "on",
    "in",
    "with",
    "and",
    "photo",
    "picture",
    "image",
    "painting",
    "drawing",
    "style",
    "sks",
    "dog",
    "cat",
    "person",
    "man",
    "woman",
    "red",
    "green",
    "blue",
    "yellow",
    "orange",
    "purple",
    "white",
    "black",
    "pink",
    "brown",
    "gray",
    "circle",
    "square",
    "triangle",
    "star",
    "ring",
    "cross",
    "shape",
    "shapes",
    "small",
    "large",
    "big",
    "background",
    "colour",
    "color",
    "on",
    "beach",
    "forest",
    "city",
    "portrait",
    "shs",
    "ohwx",
    "toy",
    "figure",
    "object",
    "class",
    "token",
    "simple",
]


def _clip_pieces(word: str) -> list[list[str]]:
    """A word's symbols as CLIP splits it: its last character marks the word's end (``</w>``)."""
    return [list(word[:-1]) + [word[-1] + "</w>"]]


def tokenizer_files() -> tuple[dict[str, int], list[str]]:
    """A CLIP byte-level BPE vocabulary and merge list covering :data:`WORDS` (deterministic)."""
    symbols = byte_symbols()
    tokens, merges = vocabulary(WORDS, _clip_pieces, symbols + [s + "</w>" for s in symbols])
    tokens += [BOS, EOS]
    if len(tokens) > VOCAB_SIZE:
        raise ValueError(f"tiny vocabulary has {len(tokens)} tokens, more than {VOCAB_SIZE}")
    return {t: i for i, t in enumerate(tokens)}, merges


def write_tokenizer(out_dir: Path, max_length: int = 77) -> Path:
    """Write a CLIP tokenizer folder (vocab.json, merges.txt, configs) and re-save it as transformers does."""
    from transformers import CLIPTokenizer

    out_dir.mkdir(parents=True, exist_ok=True)
    vocab, merges = tokenizer_files()
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": max_length,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": EOS,
        "do_lower_case": True,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    tokenizer = CLIPTokenizer.from_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def text_config(hidden: int, hidden_act: str, projection: int | None = None) -> Any:
    """A tiny CLIP text-encoder config over the tiny vocabulary."""
    from transformers import CLIPTextConfig

    vocab, _ = tokenizer_files()
    return CLIPTextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=hidden,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act=hidden_act,
        layer_norm_eps=1e-5,
        bos_token_id=vocab[BOS],
        eos_token_id=vocab[EOS],
        pad_token_id=vocab[EOS],
        projection_dim=projection or hidden,
    )


def scheduler(prediction_type: str) -> Any:
    """The inference scheduler the SD reference checkpoints ship (Euler, scaled-linear betas)."""
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type=prediction_type,
        steps_offset=1,
        timestep_spacing="leading",
    )


def vae(scaling_factor: float) -> Any:
    """A two-level KL VAE with 4 latent channels, at toy width."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=32,
        scaling_factor=scaling_factor,
    )


#: The UNet arguments every tiny SD UNet shares.
UNET_COMMON: dict[str, Any] = dict(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64), norm_num_groups=32)


def unet(cross_dim: int, **shape: Any) -> Any:
    """A tiny two-level UNet cross-attending to ``cross_dim``; ``shape`` is the family's block layout."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**UNET_COMMON, cross_attention_dim=cross_dim, **shape)


#: The SD1/SD2 block layout. diffusers reads attention_head_dim as the head count: 2 heads of 16
#: channels at the top level keep CPU attention over 32x32 latents fast (8 heads of 4 channels is 4x slower).
SD_BLOCKS: dict[str, Any] = dict(
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=(2, 4),
)
