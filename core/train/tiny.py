"""Tiny Stable-Diffusion-shaped models with random weights, built locally in well under a second.

They have the real architecture (UNet with cross-attention, KL VAE, CLIP text encoders,
byte-level BPE CLIP tokenizer) at toy size, so the whole training path runs on a CPU and
offline. ``build_tiny`` writes a diffusers folder; ``build_tiny_single_file`` writes the
same weights as one ``.safetensors`` file in the original LDM/SGM key layout.
"""

from __future__ import annotations

import json
from pathlib import Path

from core.errors import UserError

TINY_FAMILIES = ("sd1", "sd2", "sdxl")
SEED = 1234
VOCAB_SIZE = 1000
BOS, EOS = "<|startoftext|>", "<|endoftext|>"

#: Words the demo and test captions use; each gets BPE merges so it is one token.
WORDS = (
    "a an the of on in with and photo picture image painting drawing style sks dog cat person man woman "
    "red green blue yellow orange purple white black pink brown gray circle square triangle star ring "
    "cross shape shapes small large big background colour color on beach forest city portrait "
    "shs ohwx toy figure object class token simple"
).split()


def _byte_symbols() -> list[str]:
    """The 256 printable characters byte-level BPE uses for the bytes 0..255 (GPT-2's table)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    table = dict(zip(printable, codes))
    return [chr(table[b]) for b in range(256)]


def tokenizer_files() -> tuple[dict[str, int], list[str]]:
    """A CLIP byte-level BPE vocabulary and merge list covering :data:`WORDS` (deterministic)."""
    symbols = _byte_symbols()
    tokens: list[str] = symbols + [s + "</w>" for s in symbols]
    known = set(tokens)
    merges: list[str] = []
    for word in dict.fromkeys(WORDS):
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        current = parts[0]
        for nxt in parts[1:]:
            merged = current + nxt
            if merged not in known:
                merges.append(f"{current} {nxt}")
                tokens.append(merged)
                known.add(merged)
            current = merged
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


def _text_config(family: str, hidden: int, projection: int | None = None):
    from transformers import CLIPTextConfig

    vocab, _ = tokenizer_files()
    return CLIPTextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=hidden,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="quick_gelu" if family == "sd1" else "gelu",
        layer_norm_eps=1e-5,
        bos_token_id=vocab[BOS],
        eos_token_id=vocab[EOS],
        pad_token_id=vocab[EOS],
        projection_dim=projection or hidden,
    )


def _scheduler(family: str):
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="v_prediction" if family == "sd2" else "epsilon",
        steps_offset=1,
        timestep_spacing="leading",
    )


def _vae(family: str):
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
        scaling_factor=0.13025 if family == "sdxl" else 0.18215,
    )


def _unet(family: str, cross_dim: int, pooled_dim: int = 0):
    from diffusers import UNet2DConditionModel

    common = dict(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        norm_num_groups=32,
        cross_attention_dim=cross_dim,
    )
    if family == "sdxl":
        return UNet2DConditionModel(
            **common,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4),
            transformer_layers_per_block=(1, 2),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + pooled_dim,
        )
    return UNet2DConditionModel(
        **common,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        # diffusers reads attention_head_dim as the head count: 2 heads of 16 channels at the top
        # level keep CPU attention over 32x32 latents fast (8 heads of 4 channels is 4x slower)
        attention_head_dim=(2, 4),
        use_linear_projection=family == "sd2",
    )


def tiny_pipeline(family: str):
    """An in-memory tiny pipeline of ``family`` (sd1, sd2 or sdxl) with seeded random weights."""
    import torch
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    if family not in TINY_FAMILIES:
        raise UserError(f"unknown tiny model family '{family}'; use one of {', '.join(TINY_FAMILIES)}")
    torch.manual_seed(SEED)
    if family == "sdxl":
        from diffusers import StableDiffusionXLPipeline

        # the two encoders differ in width (as CLIP-L and bigG do), which single-file loaders rely on
        te1 = CLIPTextModel(_text_config(family, 32))
        te2 = CLIPTextModelWithProjection(_text_config(family, 64, projection=32))
        unet = _unet(family, cross_dim=96, pooled_dim=32)
        parts = dict(unet=unet, vae=_vae(family), text_encoder=te1, text_encoder_2=te2, scheduler=_scheduler(family))
        return StableDiffusionXLPipeline, parts
    from diffusers import StableDiffusionPipeline

    hidden = 1024 if family == "sd2" else 32
    te = CLIPTextModel(_text_config(family, hidden))
    parts = dict(unet=_unet(family, cross_dim=hidden), vae=_vae(family), text_encoder=te, scheduler=_scheduler(family))
    return StableDiffusionPipeline, parts


def build_tiny(family: str, out_dir: str | Path) -> Path:
    """Write a tiny diffusers model folder of ``family`` to ``out_dir`` and return its path.

    Deterministic (seeded) and loadable offline with ``StableDiffusionPipeline`` /
    ``StableDiffusionXLPipeline.from_pretrained``.
    """
    from transformers import CLIPTokenizer

    out = Path(out_dir)
    pipeline_class, parts = tiny_pipeline(family)
    tok_dir = write_tokenizer(out / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    parts["tokenizer"] = tokenizer
    if family == "sdxl":
        parts["tokenizer_2"] = tokenizer
    kwargs = {} if family == "sdxl" else {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    pipeline = pipeline_class(**parts, **kwargs)
    pipeline.save_pretrained(out, safe_serialization=True)
    return out


def build_tiny_single_file(family: str, path: str | Path, config_dir: str | Path | None = None) -> Path:
    """Write the tiny model of ``family`` as one ``.safetensors`` file in the original LDM/SGM layout.

    Its diffusers config without weights (what ``from_single_file(path, config=...)`` needs
    offline: configs, tokenizers) goes to ``config_dir``, by default a folder beside the file
    named like it without the suffix, where :func:`core.train.models.load_components` looks.
    """
    from core.train.outputs import save_original_file

    target = Path(path)
    config = Path(config_dir) if config_dir is not None else target.with_suffix("")
    build_tiny(family, config)
    save_original_file(config, family, target)
    for weights in config.glob("*/*.safetensors"):
        weights.unlink()
    return target
