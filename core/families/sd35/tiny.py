"""The tiny SD 3.5: the real MMDiT-X (joint blocks, one with dual attention, QK RMS norm) at toy size, seeded.

Its CLIP-L and CLIP-G are the SD families' tiny CLIP encoders (with projections, as SD3 pools
both), T5 (and its tokenizer, built locally) and the 16-channel VAE come from the shared bases;
T5 is as wide as the two CLIPs side by side, and the MMDiT reads that width.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.families.sd_unet import tiny as clip_tiny
from core.families.spec import FamilySpec

#: The tiny CLIP-L's and CLIP-G's widths (and projections): different, as single-file loaders tell them
#: apart by width; SD3's pooled vector (and the text states' CLIP part) is both side by side.
CLIP_L_WIDTH, CLIP_G_WIDTH = 16, 32


def transformer(joint_attention_dim: int) -> Any:
    """A two-block MMDiT-X: 16-channel latents in 2×2 patches, the first block with a second attention."""
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(
        sample_size=16,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=joint_attention_dim,
        caption_projection_dim=32,
        pooled_projection_dim=CLIP_L_WIDTH + CLIP_G_WIDTH,
        pos_embed_max_size=32,
        dual_attention_layers=(0,),
        qk_norm="rms_norm",
    )


def build(pipeline_class: Any, spec: FamilySpec, out_dir: Path) -> Path:
    """Write the tiny SD 3.5 with its tokenizers (the tiny CLIP BPE twice, a locally built T5 Unigram) as a diffusers folder."""
    import torch
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer, T5TokenizerFast

    from core.families import t5
    from core.families.flow_mmdit import tiny as flow_tiny

    torch.manual_seed(clip_tiny.SEED)
    clip_l = CLIPTextModelWithProjection(clip_tiny.text_config(CLIP_L_WIDTH, "quick_gelu", projection=CLIP_L_WIDTH))
    with torch.no_grad():  # SD3 pools CLIP-L unprojected (SAI's and ComfyUI's loaders; diffusers reads SAI files so)
        clip_l.text_projection.weight.copy_(torch.eye(CLIP_L_WIDTH))
    clip_g = CLIPTextModelWithProjection(clip_tiny.text_config(CLIP_G_WIDTH, "gelu", projection=CLIP_G_WIDTH))
    width = CLIP_L_WIDTH + CLIP_G_WIDTH  # T5's width, which the CLIP states side by side are padded to
    clip_tokenizer = CLIPTokenizer.from_pretrained(clip_tiny.write_tokenizer(out_dir / "tokenizer"))
    t5_tokenizer = T5TokenizerFast.from_pretrained(t5.write_tokenizer(out_dir / "tokenizer_3", clip_tiny.WORDS, spec.max_tokens("text_encoder_3")))
    vae = spec.configs["vae"]
    parts = {
        "transformer": transformer(width),
        "vae": flow_tiny.vae16(float(vae["scaling_factor"]), float(vae["shift_factor"])),
        "text_encoder": clip_l,
        "text_encoder_2": clip_g,
        "text_encoder_3": t5.tiny_encoder(clip_tiny.WORDS, width),
        "tokenizer": clip_tokenizer,
        "tokenizer_2": clip_tokenizer,
        "tokenizer_3": t5_tokenizer,
        "scheduler": flow_tiny.scheduler(spec.scheduler_config()),
    }
    pipeline_class(**parts).save_pretrained(out_dir, safe_serialization=True)
    return out_dir
